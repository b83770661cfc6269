"""fleetid on AWS: what the Lambda function runs and what the Pulumi program hands it.

- `handler`: the Lambda entry point; it imports almost nothing and assembles the server on
  the first invocation;
- `runtime`: that assembly, from the function's environment (`settings`): the DynamoDB store,
  the key custody on KMS, the client secrets and audit trail in the table, and the live
  revision read from S3 and re-checked every few seconds;
- `revision`: the revision object named by its hash and the pointer that says which is live;
- `records`: store records written by the Pulumi program, in the layout the store reads;
- `ring`: the signing key ring kept in the store, replaced by compare-and-set;
- `package`: the reproducible deployment archive (`python -m fleetid.deploy.package`).

Nothing here imports Pulumi: the function's archive does not carry it.
"""
