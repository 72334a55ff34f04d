"""The HTTP origin CDNs and players fetch from (docs/urls.md)."""
