import numpy as np
import pytest

from interactive_keypoints.metrics import mre, mre_sd, noc, noc_key, noc_summary, radial_errors, sdr


def test_mre_in_pixels_and_mm():
    truth = np.zeros((2, 2))
    pred = np.array([[3.0, 4.0], [0.0, 2.0]])  # errors 5 and 2 px
    assert mre(pred, truth) == pytest.approx(3.5)
    # spacing (0.1, 0.5): (0.3, 2.0) -> sqrt(4.09); (0, 1.0) -> 1
    assert mre(pred, truth, spacing=(0.1, 0.5)) == pytest.approx((np.sqrt(4.09) + 1.0) / 2)


def test_mre_over_leading_axes():
    truth = np.zeros((3, 2, 2))
    pred = truth + np.array([1.0, 0.0])
    np.testing.assert_allclose(mre(pred, truth), [1.0, 1.0, 1.0])


# Three images, curves over c = 0..3 clicks (max_clicks = 3):
#   image A: 30, 25, 19, 10  -> first <= 20 at c = 2; first <= 26 at c = 1
#   image B: 15, 12, 11, 9   -> <= 20 already at c = 0
#   image C: 50, 40, 30, 28  -> never <= 20 (counts 3, failure); <= 30 at c = 2
CURVES = np.array([[30, 25, 19, 10], [15, 12, 11, 9], [50, 40, 30, 28]], dtype=float)


def test_noc_and_failure_rate_by_hand():
    n, fr = noc(CURVES, 20)
    assert n == pytest.approx((2 + 0 + 3) / 3)
    assert fr == pytest.approx(100 / 3)
    # target 30 is reached by all: A at 0 (30 <= 30), B at 0, C at 2
    assert noc(CURVES, 30) == pytest.approx((2 / 3, 0.0))


def test_noc_with_fewer_clicks_than_recorded():
    # max_clicks = 1: A never reaches 20 within 1 click (counts 1), B at 0, C never (1)
    n, fr = noc(CURVES, 20, max_clicks=1)
    assert n == pytest.approx(2 / 3)
    assert fr == pytest.approx(200 / 3)


def test_noc_summary_keys():
    summary = noc_summary(CURVES, targets=(20, 30, 2.5))
    assert set(summary) == {"3@20", "3@30", "3@2.5"}
    assert summary["3@20"]["NoC"] == pytest.approx(5 / 3)
    assert summary["3@2.5"] == {"NoC": 3.0, "FR": 100.0}
    assert noc_key(10, 20.0) == "10@20"


def test_noc_rejects_bad_input():
    with pytest.raises(ValueError, match="max_clicks"):
        noc(CURVES, 20, max_clicks=5)
    with pytest.raises(ValueError, match="NaN"):
        noc(np.array([[1.0, np.nan]]), 20)


def test_sdr_and_mre_sd():
    errors = np.array([[1.0, 2.0, 2.4], [3.0, 3.9, 10.0]])
    # within 2: 1, 2 -> 2/6; 2.5: +2.4 -> 3/6; 3: +3.0 -> 4/6; 4: +3.9 -> 5/6
    rates = sdr(errors)
    assert rates == pytest.approx({2.0: 100 * 2 / 6, 2.5: 50.0, 3.0: 100 * 4 / 6, 4.0: 100 * 5 / 6})
    mean, sd = mre_sd(errors)
    assert mean == pytest.approx(errors.mean())
    assert sd == pytest.approx(errors.std())


def test_radial_errors_shape_check():
    with pytest.raises(ValueError, match="K, 2"):
        radial_errors(np.zeros((3, 3)), np.zeros((3, 3)))
