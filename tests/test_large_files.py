"""large_files.yml lists the weights with their sha256."""

import hashlib
import json

from scripts.large_files import main


def test_manifest_lists_weights_with_sha256(tmp_path):
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "metadata.json").write_text(json.dumps({"version": "0.2.0"}))
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "model.pt").write_bytes(b"weights")
    assert main(["--bundle_root", str(tmp_path)]) == 0
    text = (tmp_path / "large_files.yml").read_text()
    assert 'path: "models/model.pt"' in text and "v0.2.0/model.pt" in text
    assert f'hash_val: "{hashlib.sha256(b"weights").hexdigest()}"' in text
    assert "coarse_model.pt" not in text
