"""The convolution rate benchmark on a few glimpses."""

from benchmarks import conv_rate


def test_conv_rate_prints_every_case(capsys):
    conv_rate.main(["--glimpses", "2", "--steps", "1", "--repeats", "1"])
    rows = [line.split("|")[1:-1] for line in capsys.readouterr().out.splitlines()[2:]]
    names = [row[0].strip() for row in rows]
    assert names == ["matmul, same multiply-adds (baseline)", "convolution, forward",
                     "convolution, forward and backward", "convolution, forward and backward, bfloat16"]
    assert rows[0][3].strip() == "1.00x"
    for row in rows:
        assert float(row[2]) > 0
