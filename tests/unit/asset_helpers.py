"""Upload and download helpers for the unit tests of the asset domain."""

from __future__ import annotations

from reelvault.assets import MAX_CHUNK, AssetInfo, Assets, UploadSpec


def put(assets: Assets, tenant: str, data: bytes, path: str = "a/b.ts", **spec) -> AssetInfo:
    """Upload ``data`` in chunks of the largest size a client may send."""
    upload = assets.begin_upload(tenant, UploadSpec(path=path, **spec))
    for i in range(0, len(data), MAX_CHUNK):
        upload.write(data[i : i + MAX_CHUNK])
    return upload.complete()


def get(assets: Assets, tenant: str, asset_id: str, **rng) -> bytes:
    """The whole asset, or the range ``rng`` names (offset/length or suffix)."""
    return b"".join(assets.open_download(tenant, asset_id, **rng).chunks)


def listed(assets: Assets, tenant: str, prefix: str, page_size: int = 2) -> list[str]:
    """Every path under ``prefix``, following page tokens with tiny pages."""
    paths: list[str] = []
    token = ""
    while True:
        page, token = assets.list(tenant, prefix=prefix, page_size=page_size, page_token=token)
        paths += [a.path for a in page]
        if not token:
            return paths
