"""Signed distribution URLs (docs/urls.md): the token format, the signing keys, issuance
and revocation; the HTTP origin that verifies them lives in :mod:`reelvault.origin`."""
