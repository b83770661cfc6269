"""CustomDomain: the identity server's Function URL under a domain of the team's own.

A Function URL answers only on its generated `*.lambda-url.<region>.on.aws` name, so the
domain is a CloudFront distribution in front of it, with a certificate from ACM in us-east-1
(the only region CloudFront takes certificates from). The DNS record is left to the team:
point the domain (CNAME or alias) at the `distribution_domain` output.
"""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_aws as aws

__all__ = ["CustomDomain", "CustomDomainArgs"]

# AWS-managed origin request policy "AllViewerExceptHostHeader": every viewer header except
# Host, which a Function URL needs to be its own name.
ALL_VIEWER_EXCEPT_HOST = "b689b0a8-53d0-40ab-baf2-68738e2966ac"


@dataclass
class CustomDomainArgs:
    """The domain, its ACM certificate (in us-east-1) and the Function URL it fronts."""

    domain: str
    certificate_arn: str
    function_url: pulumi.Input[str]


class CustomDomain(pulumi.ComponentResource):
    distribution_domain: pulumi.Output[str]

    def __init__(
        self, name: str, args: CustomDomainArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("fleetid:index:CustomDomain", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)

        # CloudFront forwards Authorization only when the cache key holds it. Keying on it
        # (and on cookies and the query) with a default TTL of 0 caches nothing the server
        # does not allow: only the JWKS and discovery, which say max-age themselves.
        cache_policy = aws.cloudfront.CachePolicy(
            f"{name}-cache",
            comment="fleetid: cache only what the identity server marks cacheable",
            min_ttl=0,
            default_ttl=0,
            max_ttl=300,
            parameters_in_cache_key_and_forwarded_to_origin={
                "headers_config": {
                    "header_behavior": "whitelist",
                    "headers": {"items": ["Authorization"]},
                },
                "cookies_config": {"cookie_behavior": "all"},
                "query_strings_config": {"query_string_behavior": "all"},
            },
            opts=child,
        )

        # The origin is the Function URL's host name; CloudFront talks to it over TLS only.
        origin_host = pulumi.Output.from_input(args.function_url).apply(
            lambda url: url.removeprefix("https://").rstrip("/")
        )
        distribution = aws.cloudfront.Distribution(
            f"{name}-distribution",
            comment=f"fleetid identity server at {args.domain}",
            enabled=True,
            is_ipv6_enabled=True,
            aliases=[args.domain],
            origins=[
                {
                    "origin_id": "identity-server",
                    "domain_name": origin_host,
                    "custom_origin_config": {
                        "http_port": 80,
                        "https_port": 443,
                        "origin_protocol_policy": "https-only",
                        "origin_ssl_protocols": ["TLSv1.2"],
                    },
                }
            ],
            default_cache_behavior={
                "target_origin_id": "identity-server",
                "viewer_protocol_policy": "redirect-to-https",
                "allowed_methods": ["GET", "HEAD", "OPTIONS", "PUT", "POST", "PATCH", "DELETE"],
                "cached_methods": ["GET", "HEAD"],
                "cache_policy_id": cache_policy.id,
                "origin_request_policy_id": ALL_VIEWER_EXCEPT_HOST,
                "compress": True,
            },
            viewer_certificate={
                "acm_certificate_arn": args.certificate_arn,
                "ssl_support_method": "sni-only",
                "minimum_protocol_version": "TLSv1.2_2021",
            },
            restrictions={"geo_restriction": {"restriction_type": "none"}},
            opts=child,
        )

        self.distribution_domain = distribution.domain_name
        self.register_outputs({"distribution_domain": self.distribution_domain})
