"""The MONAI Label app, served for real by `monailabel start_server` on 127.0.0.1, against the bundle's own CLI."""

import json
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

PROJECT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def post(url: str) -> tuple[int, bytes]:
    boundary = "landmarktest"
    body = f'--{boundary}\r\nContent-Disposition: form-data; name="params"\r\n\r\n{{}}\r\n--{boundary}--\r\n'.encode()
    request = urllib.request.Request(url, data=body, method="POST", headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    try:
        with urllib.request.urlopen(request, timeout=300) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


@pytest.fixture(scope="module")
def server(afids_bundle_dir, tmp_path_factory):
    studies = tmp_path_factory.mktemp("studies")
    sample = afids_bundle_dir / "data" / "afids" / "sample" / "sample_T1w.nii.gz"
    shutil.copy(sample, studies / "sample_T1w.nii.gz")
    (studies / "broken.nii.gz").write_bytes(sample.read_bytes()[:5000])
    port = free_port()
    log = open(tmp_path_factory.mktemp("server") / "server.log", "w")
    process = subprocess.Popen([sys.executable, "-m", "monailabel.main", "start_server", "--app", str(PROJECT / "monailabel_app"),
                                "--studies", str(studies), "--host", "127.0.0.1", "--port", str(port), "--conf", "bundle_root", str(PROJECT)],
                               cwd=studies, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(180):
            if process.poll() is not None:
                raise AssertionError(f"server exited: {Path(log.name).read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"{url}/info/", timeout=5) as response:
                    info = json.loads(response.read())
                break
            except OSError:
                time.sleep(1)
        else:
            raise AssertionError("server did not start in 180 s")
        yield {"url": url, "info": info, "sample": sample}
    finally:
        process.terminate()
        process.wait(timeout=30)
        log.close()


def test_server_lists_a_segmentation_type_landmark_model(server):
    model = server["info"]["models"]["landmarks"]
    assert model["type"] == "segmentation" and model["dimension"] == 3
    assert model["labels"]["AC"] == 1 and len(model["labels"]) == 32


def test_infer_returns_the_landmarks_of_the_bundle_cli_and_a_label_image(server, tmp_path):
    status, body = post(f"{server['url']}/infer/landmarks?image=sample_T1w&output=json")
    assert status == 200, body[:500]
    served = json.loads(body)
    assert served["coordinate_system"] == "RAS" and served["label_names"]["LOSF"] == 32

    subprocess.run([sys.executable, "-m", "monai.bundle", "run", "--config_file", "configs/inference.json", "--input", str(server["sample"]),
                    "--output_dir", str(tmp_path / "cli"), "--save_png", "False"], cwd=PROJECT, check=True, capture_output=True)
    cli = json.loads((tmp_path / "cli" / "sample_T1w.json").read_text())["landmarks"]
    for name, entry in cli.items():
        np.testing.assert_allclose(served["landmarks"][name]["position"], entry["position"], atol=0.01)
        assert served["landmarks"][name]["found"] == entry["found"]

    status, body = post(f"{server['url']}/infer/landmarks?image=sample_T1w&output=image")
    assert status == 200
    (tmp_path / "label.nii.gz").write_bytes(body)
    label = nib.load(tmp_path / "label.nii.gz")
    image = nib.load(server["sample"])
    assert label.shape == image.shape and np.allclose(label.affine, image.affine, atol=1e-4)
    values = np.asarray(label.dataobj)
    found = {name: i + 1 for i, name in enumerate(cli) if cli[name]["found"]}
    assert set(np.unique(values)) - {0} == set(found.values())
    for name, value in found.items():
        centroid = np.argwhere(values == value).mean(axis=0)
        assert np.linalg.norm(centroid - np.asarray(cli[name]["voxel"])) < 1.0, name


def test_a_broken_image_gets_a_clear_error_and_the_server_keeps_serving(server):
    status, body = post(f"{server['url']}/infer/landmarks?image=broken&output=json")
    assert status == 400
    assert "broken.nii.gz: cannot read image" in json.loads(body)["detail"]
    status, _ = post(f"{server['url']}/infer/landmarks?image=sample_T1w&output=json")
    assert status == 200
