import pytest

from careplane.records.ucum import canonical


def test_same_kind_units_share_a_canonical_form() -> None:
    mg_dl, canon = canonical("mg/dL")
    g_l, canon2 = canonical("g/L")
    assert canon == canon2 == "g.m-3"
    # 100 mg/dL is 1 g/L
    assert 100 * mg_dl == pytest.approx(1 * g_l)


def test_operators_bind_left_to_right() -> None:
    assert canonical("kg/m2")[1] == "g.m-2"
    assert canonical("mmol/L")[1] == canonical("mol/m3")[1]
    assert canonical("g/m.s")[1] == "g.m-1.s"
    factor, code = canonical("/min")
    assert code == "s-1" and factor == pytest.approx(1 / 60)


def test_annotations_powers_and_customary_units() -> None:
    assert canonical("{beats}/min")[1] == "s-1"
    assert canonical("10*3/uL") == (1e12, "m-3")
    assert canonical("[lb_av]") == (453.59237, "g")


def test_unknown_units_match_only_themselves() -> None:
    assert canonical("[arb'U]") == (1.0, "[arb'U]")
    assert canonical("widgets") == (1.0, "widgets")
