"""Issuance decisions and their explanations."""
