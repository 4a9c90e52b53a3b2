"""The convolution rate benchmark on a few glimpses."""

import math

from benchmarks import conv_rate

CASES = ["matmul, same multiply-adds (baseline)", "convolution, forward",
         "convolution, forward and backward", "convolution, forward and backward, bfloat16"]


def test_measure_times_every_case():
    results = conv_rate.measure(glimpses=2, steps=1, repeats=1)
    assert [name for name, _, _ in results] == CASES
    for name, seconds, rate in results:
        assert seconds > 0, name
        assert math.isfinite(rate), name
        assert rate > 0, name


def test_main_prints_table(capsys):
    conv_rate.main(["--glimpses", "2", "--steps", "1", "--repeats", "1"])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "| case | ms | GFLOP/s | vs matmul |"
    rows = [line.split("|")[1:-1] for line in lines[2:]]
    assert [row[0].strip() for row in rows] == CASES
    assert rows[0][3].strip() == "1.00x"
