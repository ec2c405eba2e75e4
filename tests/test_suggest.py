"""The one "did you mean" hint shared by every refusal of a misspelt name."""

from __future__ import annotations

from mtls_hooks.core._suggest import did_you_mean


def test_names_the_closest_valid_name() -> None:
    assert did_you_mean("wokers", ["workers", "bind"]) == " (did you mean 'workers'?)"


def test_says_nothing_without_a_close_name() -> None:
    assert did_you_mean("zzz", ["workers", "bind"]) == ""


def test_spells_the_match_for_its_context() -> None:
    hint = did_you_mean("client_caa", ["client_ca"], spell=lambda k: "MTLS_HOOKS_" + k.upper())
    assert hint == " (did you mean 'MTLS_HOOKS_CLIENT_CA'?)"


def test_a_lower_cutoff_admits_looser_matches() -> None:
    assert did_you_mean("pay", ["payments"]) == ""
    assert did_you_mean("pay", ["payments"], cutoff=0.5) == " (did you mean 'payments'?)"
