"""`seglab models` answers from src/seglab/catalog.json: it must say what the registry builds."""

import pytest

from seglab.catalog import catalog_from_registry, load_catalog, select


def test_catalog_matches_the_registry():
    stored, live = load_catalog(), catalog_from_registry()
    assert [row["name"] for row in stored] == [row["name"] for row in live]
    for old, new in zip(stored, live, strict=True):
        assert old == new, f"{new['name']}: catalog.json is out of date; run `python -m seglab.catalog`"


def test_select_by_part_or_pattern_with_close_matches():
    rows = load_catalog()
    assert [r["name"] for r in select(rows, "segnext")] == ["segnext_b", "segnext_l", "segnext_s", "segnext_t"]
    assert [r["name"] for r in select(rows, "upernet_*_t")] == ["upernet_asmlp_t", "upernet_swin_t"]
    with pytest.raises(ValueError, match="no model matches segfromer_b0; did you mean segformer_b0"):
        select(rows, "segfromer_b0")
