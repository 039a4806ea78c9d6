"""bench/ablations.py: the fixed validation subset (scripts.data.cases_per_group), per-group metrics and the paired
difference, by hand."""

import numpy as np

from bench.ablations import group_metrics, paired_difference
from scripts.data import cases_per_group


def test_validation_subset_alternates_anatomies_and_is_order_free():
    entries = [{"image": f"{a}_{i}.nii.gz", "group": g, "anatomy": a} for g, anatomies in (("warp", ("nlin6", "fsaverage", "mni2009c")), ("t2w", ("mni2009c",)))
               for a in anatomies for i in (2, 1, 0)]
    chosen = cases_per_group(entries, 2)
    assert [e["image"] for e in chosen] == ["mni2009c_0.nii.gz", "mni2009c_1.nii.gz", "fsaverage_0.nii.gz", "mni2009c_0.nii.gz"]
    assert [e["group"] for e in chosen] == ["t2w", "t2w", "warp", "warp"]
    assert cases_per_group(list(reversed(entries)), 2) == chosen
    assert [e["image"] for e in cases_per_group(entries, 1, groups=["warp"])] == ["fsaverage_0.nii.gz"]
    assert cases_per_group(entries, None, groups=["t2w"]) == entries[9:], "without a limit: every entry, datalist order"
    assert len(cases_per_group([{"image": "x"}], 1, groups=["testing"], default_group="testing")) == 1


def test_group_metrics_and_paired_difference_by_hand():
    reference = {"a": np.array([1.0, 3.0]), "b": np.array([5.0, np.nan])}  # NaN: a landmark not annotated in b
    errors = {"a": np.array([1.0, 1.0]), "b": np.array([2.0, np.nan])}
    metrics = group_metrics(reference, {"a": "g1", "b": "g2"})
    assert metrics["g1"]["mre"] == 2.0 and metrics["g2"]["n"] == 1 and metrics["all"]["mre"] == 3.0
    assert metrics["all"]["sdr_2mm"] == 1 / 3
    d = paired_difference(errors, reference, resamples=200)
    assert d["cases"] == 2
    assert np.isclose(d["mre"], 4 / 3 - 3.0)  # (1 + 1 + 2) / 3 - (1 + 3 + 5) / 3
    assert np.isclose(d["sdr_2mm"], 1.0 - 1 / 3)
    assert d["mre_ci"][0] <= d["mre"] <= d["mre_ci"][1]
