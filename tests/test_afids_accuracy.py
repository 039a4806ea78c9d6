"""bench/afids_accuracy.py: the per-group table, including the row over the cases training did not choose its
checkpoint on, by hand; and which cases those are (train.json's ``validation_cases``, as training spreads them)."""

import json
from pathlib import Path

from bench.afids_accuracy import group_table, selection_images


def test_group_table_adds_the_row_without_the_checkpoint_selection_cases():
    results = {"model": ({"a": {"x": 1.0}, "b": {"x": 3.0}}, {"a": 1.0, "b": 2.0}),
               "model + mirror TTA": ({"a": {"x": 1.0, "y": 3.0}, "b": {"x": 2.5, "y": 4.5}}, {"a": 1.0, "b": 3.0}),
               "affine": ({"a": {"x": 5.0}, "b": {"x": 5.0}}, {"a": 1.0, "b": 1.0})}
    rows = group_table(results, ["a", "b"], {"a"})[2:]
    assert [r.split(" | ")[0] for r in rows] == ["| model", "| model + mirror TTA",
                                                "| model + mirror TTA, not the 1 checkpoint-selection case(s)", "| affine"]
    # TTA over both cases: MRE (1 + 3 + 2.5 + 4.5) / 4 = 2.75; over b alone: (2.5 + 4.5) / 2 = 3.5, SDR@3 1 of 2
    assert rows[1].split(" | ")[1:4] == ["2", "4", "2.75"]
    assert rows[2].split(" | ")[1:4] == ["1", "2", "3.50"] and rows[2].split(" | ")[6] == "50.0%"
    assert rows[2].endswith("| 3.0 |"), "seconds per case over the same case"
    assert len(group_table(results, ["a", "b"])) == 5, "no selection: no extra row"
    assert len(group_table(results, ["a", "b"], {"a", "b"})) == 5, "every case chose the checkpoint: no empty row"


def test_selection_images_follow_validation_cases(tmp_path):
    bundle = tmp_path / "bundle"
    (bundle / "configs").mkdir(parents=True)
    (bundle / "configs" / "train.json").write_text(json.dumps({"validation_cases": 2}))
    entries = [{"image": f"{g}_{i}.nii.gz", "group": g, "landmarks": {"A": [0, 0, 0]}} for g in ("u", "v") for i in range(3)]
    for entry in entries:
        (tmp_path / entry["image"]).touch()  # the datalist check wants the files; selection never reads them
    datalist = tmp_path / "datalist.json"
    datalist.write_text(json.dumps({"landmark_names": ["A"], "training": entries[:1], "validation": entries}))
    chosen = selection_images(bundle, datalist)
    assert sorted(Path(p).name for p in chosen) == ["u_0.nii.gz", "v_0.nii.gz"], "one per group, round-robin"
    (bundle / "configs" / "train.json").write_text(json.dumps({"validation_cases": 0}))
    assert selection_images(bundle, datalist) == set(), "training scores every case: nothing to leave out"
