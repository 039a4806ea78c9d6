"""Distribution: the model-zoo zip, download over HTTP (127.0.0.1), TorchScript export, MONAI's bundle checks."""

import functools
import http.server
import json
import shutil
import subprocess
import sys
import threading
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from scripts.errors import LandmarkDataError
from scripts.large_files import sha256_of
from scripts.package import build_zip

PROJECT = Path(__file__).resolve().parent.parent
NAME = "afids_landmark_detection"
# runs the real CLI in this process, then reports which `scripts` package the configs imported
RUN_AND_REPORT = (
    "import runpy, sys; sys.argv = ['monai.bundle'] + sys.argv[1:]; "
    "runpy.run_module('monai.bundle', run_name='__main__', alter_sys=True); "
    "import scripts; print('SCRIPTS_PACKAGE', scripts.__file__)"
)


def cli(args, cwd, timeout=600):
    result = subprocess.run([sys.executable, *map(str, args)], cwd=cwd, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{args}:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result.stdout + result.stderr


@pytest.fixture(scope="module")
def bundle_zip(tmp_path_factory):
    return build_zip(PROJECT, tmp_path_factory.mktemp("dist"))


def test_zip_holds_the_bundle_under_its_name_and_nothing_else(bundle_zip):
    metadata = json.loads((PROJECT / "configs" / "metadata.json").read_text())
    assert bundle_zip.name == f"{NAME}_v{metadata['version']}.zip"
    with zipfile.ZipFile(bundle_zip) as archive:
        names = archive.namelist()
        assert all(n.startswith(f"{NAME}/") for n in names)
        inside = {n[len(NAME) + 1 :] for n in names}
        assert {"configs/inference.json", "configs/train.json", "configs/metadata.json", "metadata.json", "LICENSE",
                "large_files.yml", "models/model.pt", "models/coarse_model.pt", "models/calibration.json", "scripts/__init__.py",
                "models/model.json", "models/coarse_model.json",  # the weights' sidecars
                "docs/README.md"} <= inside
        assert not [n for n in inside if n.startswith(("tests/", "bench/", "data/", ".ci/")) or "__pycache__" in n or "checkpoint_epoch" in n]
        assert json.loads(archive.read(f"{NAME}/metadata.json")) == metadata, "the top-level metadata.json is a real file"
        manifest = archive.read(f"{NAME}/large_files.yml").decode()
        for weight in ("models/model.pt", "models/coarse_model.pt"):
            assert sha256_of(PROJECT / weight) in manifest


def test_zip_refuses_weights_that_differ_from_the_manifest(tmp_path):
    copy = tmp_path / "bundle"
    shutil.copytree(PROJECT, copy, ignore=shutil.ignore_patterns("data", "tests", ".git", "predictions", "checkpoint_*", "fold_*", "dist"))
    with open(copy / "models" / "coarse_model.pt", "ab") as f:
        f.write(b"retrained")
    with pytest.raises(LandmarkDataError, match=r"coarse_model.pt: sha256 differs from large_files.yml"):
        build_zip(copy, tmp_path / "dist")
    assert not list((tmp_path / "dist").glob("*")), "no zip, not even a partial one"


def test_download_over_http_and_run_from_outside_the_repository(bundle_zip, afids_bundle_dir, tmp_path):
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(bundle_zip.parent))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/{bundle_zip.name}"
        cli(["-m", "monai.bundle", "download", "--name", NAME, "--url", url, "--bundle_dir", tmp_path / "bundles"], cwd=tmp_path)
    finally:
        server.shutdown()
    downloaded = tmp_path / "bundles" / NAME
    assert (downloaded / "configs" / "inference.json").is_file() and (downloaded / "models" / "model.pt").is_file()

    sample = afids_bundle_dir / "data" / "afids" / "sample" / "sample_T1w.nii.gz"
    # model-zoo usage: from the downloaded bundle's folder (its scripts/ is the package the configs import)
    log = cli(["-c", RUN_AND_REPORT, "run", "--config_file", "configs/inference.json",
               "--input", sample, "--output_dir", tmp_path / "from_zip", "--save_png", "False"], cwd=downloaded)
    imported = Path(log.split("SCRIPTS_PACKAGE", 1)[1].split()[0]).resolve()
    assert imported.is_relative_to(downloaded.resolve()), f"scripts imported from {imported}, not from the downloaded bundle"

    cli(["-m", "monai.bundle", "run", "--config_file", "configs/inference.json", "--input", sample, "--output_dir",
         tmp_path / "from_repo", "--save_png", "False"], cwd=PROJECT)
    from_zip = json.loads((tmp_path / "from_zip" / "sample_T1w.json").read_text())["landmarks"]
    from_repo = json.loads((tmp_path / "from_repo" / "sample_T1w.json").read_text())["landmarks"]
    assert set(from_zip) == set(from_repo) and len(from_zip) == 32
    for name in from_repo:
        np.testing.assert_allclose(from_zip[name]["position"], from_repo[name]["position"], atol=1e-4)


def test_torchscript_export_gives_the_same_heatmaps_and_runs_inference_json(tmp_path, afids_bundle_dir):
    exported = tmp_path / "model.ts"
    cli(["-m", "monai.bundle", "ckpt_export", "network_def", "--filepath", exported, "--ckpt_file", "models/model.pt",
         "--meta_file", "configs/metadata.json", "--config_file", "configs/inference.json"], cwd=PROJECT)  # a plain state dict
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(PROJECT / "configs" / "inference.json"))
    parser["bundle_root"] = str(PROJECT)
    network = parser.get_parsed_content("network_def")
    network.load_state_dict(torch.load(PROJECT / "models" / "model.pt", map_location="cpu", weights_only=True))
    scripted = torch.jit.load(str(exported), map_location="cpu")
    image = torch.randn(1, 1, 48, 48, 48, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(scripted(image), network.eval()(image), atol=1e-5, rtol=1e-4)
    extra_files = {"metadata.json": ""}
    torch.jit.load(str(exported), _extra_files=extra_files)
    assert json.loads(extra_files["metadata.json"])["name"] == NAME, "the export carries the bundle's metadata"

    sample = afids_bundle_dir / "data" / "afids" / "sample" / "sample_T1w.nii.gz"
    common = ["-m", "monai.bundle", "run", "--config_file", "configs/inference.json", "--input", sample, "--save_png", "False", "--tta", "False"]
    cli([*common, "--output_dir", tmp_path / "pt"], cwd=PROJECT)
    cli([*common, "--output_dir", tmp_path / "ts", "--model_files", f"['{exported}']"], cwd=PROJECT)
    from_pt = json.loads((tmp_path / "pt" / "sample_T1w.json").read_text())["landmarks"]
    from_ts = json.loads((tmp_path / "ts" / "sample_T1w.json").read_text())["landmarks"]
    for name in from_pt:
        np.testing.assert_allclose(from_ts[name]["position"], from_pt[name]["position"], atol=1e-3)


def test_verify_net_in_out_passes_with_the_declared_shapes():
    log = cli(["-m", "monai.bundle", "verify_net_in_out", "network_def", "--meta_file", "configs/metadata.json",
               "--config_file", "configs/inference.json"], cwd=PROJECT)
    assert "data shape of network is verified with no error" in log


def _requirement_names(path: Path) -> set:
    import re

    lines = [line.split("#")[0].strip() for line in path.read_text().splitlines()]
    return {re.split(r"[\[<>=~!; ]", line, maxsplit=1)[0].lower() for line in lines if line and not line.startswith("-")}


def test_metadata_lists_what_requirements_install_and_nothing_only_tests_need():
    """metadata.json's required packages are requirements.txt's (beyond torch, monai, numpy); scipy and itk,
    which MONAI imports at start-up whenever they are installed, stay in requirements-test.txt."""
    from scripts.metadata import REQUIRED_PACKAGES

    runtime = _requirement_names(PROJECT / "requirements.txt")
    assert runtime - {"torch", "monai", "numpy"} == {p.lower() for p in REQUIRED_PACKAGES}
    assert not runtime & {"scipy", "itk", "pytest"}
    assert {"scipy", "itk", "pytest"} <= _requirement_names(PROJECT / "requirements-test.txt")
    shipped = json.loads((PROJECT / "configs" / "metadata.json").read_text())["required_packages_version"]
    assert set(shipped) == set(REQUIRED_PACKAGES)


ZOO_SCHEMA = PROJECT.parent / "shared" / "monai" / "meta_schema_20240725.json"
ZOO_CHECKS = r'''
import json, os, sys
from monai.bundle import ckpt_export, create_workflow, verify_metadata, verify_net_in_out

zoo, name, schema, scan = sys.argv[1:5]
bundle = os.path.join(zoo, name)
sys.path.insert(0, bundle)  # as the zoo's script does: the bundle's own scripts package
configs = os.path.join(bundle, "configs")
meta_file, config_file = os.path.join(configs, "metadata.json"), os.path.join(configs, "inference.json")
for needed in ("configs/metadata.json", "LICENSE", "models/model.pt", "configs/inference.json"):  # directory
    assert os.path.isfile(os.path.join(bundle, needed)), needed
metadata = json.load(open(meta_file))  # version and changelog, against the zoo's model_info.json
assert metadata["version"] in metadata["changelog"] and f"{name}_v{metadata['version']}" not in json.load(open(os.path.join(zoo, "model_info.json")))
verify_metadata(meta_file=meta_file, filepath=schema)
workflow = create_workflow(workflow_type="inference", bundle_root=bundle, config_file=config_file, meta_file=meta_file,
                           logging_file=os.path.join(configs, "logging.conf"), input=scan)
problems = workflow.check_properties()
assert not problems, problems
verify_net_in_out(net_id="network_def", meta_file=meta_file, config_file=config_file, bundle_root=bundle)
ckpt_export(net_id="network_def", filepath=os.path.join(bundle, "models", "verify_model.ts"), ckpt_file=os.path.join(bundle, "models", "model.pt"),
            meta_file=meta_file, config_file=config_file, bundle_root=bundle)
print("ZOO_CHECKS_PASSED")
'''


def test_model_zoo_ci_checks_pass_on_the_zoo_layout(bundle_zip, tmp_path):
    """The checks of the model zoo's ci/verify_bundle.py (Project-MONAI/model-zoo, full mode), offline, with monai.bundle's
    own functions, on the zip laid out as the zoo lays out bundles (models/<name>/ beside models/model_info.json; an empty
    one: a new bundle): necessary files, version in the changelog, verify_metadata against the zoo's schema, the inference
    workflow's property check, verify_net_in_out, and ckpt_export of models/model.pt with no --key_in_ckpt (the check a
    wrapped checkpoint failed). The property check here is MONAI's own (InferProperties + MetaProperties), a superset of
    the MONAI Label app's the zoo checks: it instantiates the dataset too, so it is given a scan (a 24^3 volume)."""
    import nibabel as nib

    if not ZOO_SCHEMA.exists():
        pytest.skip("model-zoo schema not available beside the project")
    zoo = tmp_path / "models"
    with zipfile.ZipFile(bundle_zip) as archive:
        archive.extractall(zoo)
    (zoo / "model_info.json").write_text("{}")
    scan = tmp_path / "scan.nii.gz"
    nib.save(nib.Nifti1Image(np.random.default_rng(0).random((24, 24, 24)).astype(np.float32), np.eye(4)), str(scan))
    script = tmp_path / "verify_bundle_checks.py"
    script.write_text(ZOO_CHECKS)
    log = cli([script, zoo, NAME, ZOO_SCHEMA, scan], cwd=tmp_path)
    assert "ZOO_CHECKS_PASSED" in log and "metadata is verified with no error" in log, log[-3000:]
    assert (zoo / NAME / "models" / "verify_model.ts").stat().st_size > 1_000_000
    assert not (PROJECT / "models" / "verify_model.ts").exists()
