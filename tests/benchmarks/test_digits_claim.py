"""Tests of the digits claim experiment's settings and tables (no training)."""

import pytest

from benchmarks import digits_claim


def test_parse_setting_types_and_flags():
    setting = digits_claim.parse_setting("quick:cluster_kl=batch,alpha=4,y_size=10,jit_compile=true")
    assert setting.name == "quick"
    assert setting.overrides == {"cluster_kl": "batch", "alpha": 4.0, "y_size": 10, "jit_compile": True}
    assert setting.flags() == ["--cluster_kl", "batch", "--alpha", "4.0", "--y_size", "10", "--jit_compile"]
    assert digits_claim.parse_setting("paper:").overrides == {}


@pytest.mark.parametrize("text, message", [
    ("bad:training_steps=5", "training_steps is set by this command's own flags"),
    ("no-colon", "expected NAME:FIELD=VALUE"),
    ("bad:colour=red", "'colour=red' is not FIELD=VALUE"),
    ("bad:y_size=ten", "y_size needs a int"),
    ("bad:jit_compile=maybe", "jit_compile needs a bool"),
])
def test_parse_setting_rejects_bad_input(text, message):
    with pytest.raises(ValueError, match=message):
        digits_claim.parse_setting(text)


def _scores(nmi: float, majority: float) -> dict:
    # As in metrics.json, no Hungarian accuracy when K differs from the number of classes.
    return {"majority_accuracy": majority, "nmi": nmi, "ari": nmi / 2, "clusters_used": 30}


def _record(model: str, seed: int, nmi: float) -> dict:
    metrics = {key: _scores(nmi, 0.5) for key in ("clusters", "chance", "kmeans_pixels", "kmeans_z_g")}
    metrics["cluster_factor_nmi"] = {factor: 0.1 for factor in digits_claim.FACTORS}
    metrics["num_clusters"] = 30
    return {"model": model, "seed": seed, "steps": 100, "train_cpu_s": 60.0, "metrics": metrics}


def test_comparison_table_means_and_spread():
    records = [_record("gmvae", 0, 0.1), _record("gmvae", 1, 0.3), _record("lggmvae", 0, 0.5),
               _record("lggmvae", 1, 0.5)]
    table = digits_claim.comparison_table(records)
    rows = {line.split(" | ")[0].lstrip("| "): line for line in table.splitlines()[3:] if line.startswith("| ")}
    assert "0.200 ± 0.141" in rows["gmvae clusters"]
    assert "| 0.500 |" in rows["lggmvae clusters"]  # Equal values from every seed print once.
    assert sorted(rows) == ["gmvae clusters", "k-means on gmvae z_g", "k-means on lggmvae z_g",
                            "k-means on pixels, K = 30", "lggmvae clusters", "random assignment to K = 30"]
    assert "n/a" in rows["gmvae clusters"]


def test_main_rejects_bad_setting(tmp_path, capsys):
    with pytest.raises(SystemExit):
        digits_claim.main(["compare", "--data", str(tmp_path), "--output", str(tmp_path / "out"),
                           "--setting", "nonsense"])
    assert "--setting 'nonsense'" in capsys.readouterr().err
