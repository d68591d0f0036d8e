"""Pinned assets of other projects: download once, verify by sha256, cache by content, local override."""
import hashlib, os, pathlib, pytest
from ciebench.assets import PinnedAsset, resolve_asset
from ciebench.errors import IntegrityError, EnvironmentProblem
def test_pinned_asset_download_cache_verify_and_local_override(tmp_path, monkeypatch):
    monkeypatch.setenv("CIEBENCH_CACHE", str(tmp_path/"c"))
    f=tmp_path/"p.txt"; f.write_text("hello")
    h=hashlib.sha256(b"hello").hexdigest()
    a=PinnedAsset("t", f.as_uri(), h, "test")
    r=resolve_asset(a); assert r.origin=="download" and r.verified and r.read_text()=="hello"
    assert resolve_asset(a).origin=="cache"
    bad=PinnedAsset("t2", f.as_uri(), "0"*64, "test")
    with pytest.raises(IntegrityError): resolve_asset(bad)
    r=resolve_asset(bad, local_dir=tmp_path, allow_unverified_local=True); assert not r.verified
    with pytest.raises(IntegrityError): resolve_asset(bad, local_dir=tmp_path)
    far=PinnedAsset("t3", "https://example.org/x.txt", h, "t")
    monkeypatch.setenv("HF_HUB_OFFLINE","1")
    with pytest.raises(EnvironmentProblem): resolve_asset(far)
