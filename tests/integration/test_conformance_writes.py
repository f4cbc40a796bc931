"""The distribution-spec conformance suite's push and content-management workflows
(conformance.py), run twice against the same docker-registry (distribution 2.8, token auth as
Harbor has, deletion enabled): once directly, once through the proxy. Each run uses
repositories of its own.

Issue 15's acceptance: every check the upstream itself passes also passes through the proxy.
One test per check (ids are the check ids) says so. A check the upstream fails cannot hold the
proxy to more: its test asserts the proxy fails it the same way (the same statuses), and a
check the suite does not run against this upstream must not run through the proxy either. Whole-run tests: the upstream passes the core push
checks (so none of this holds vacuously), the set passing through the proxy contains the set
passing directly, every request is answered through the proxy with the status the upstream gave
it directly, Locations followed through the proxy never leave it, and OCI-Subject reaches the
client as the upstream sent it (distribution 2.8 has no referrers API and sends none: the proxy
must not invent one).
"""
import pytest

import checks
import conformance
from proxy import running_proxy, upstream

ALICE = ("alice", "wonderland")   # token_server.py: pull, push, delete everywhere


@pytest.fixture(scope="module")
def direct_run(token_registry):
    return conformance.run(token_registry.url, ALICE)


@pytest.fixture(scope="module")
def conformance_proxy(tmp_path_factory, token_registry):
    with running_proxy(tmp_path_factory.mktemp("proxy-conformance"),
                       [upstream("main", token_registry.url, token_proxy=True)]) as p:
        yield p


@pytest.fixture(scope="module")
def proxy_run(conformance_proxy, direct_run):
    # After the direct run (the fixture order): the same registry, repositories of its own.
    run = conformance.run(conformance_proxy.url, ALICE)
    checks.assert_healthy(conformance_proxy)
    return run


def listing(run):
    return "\n".join(f"  {r.status:4} {r.id}: {r.reason}" if r.reason else f"  {r.status:4} {r.id}"
                     for r in run.results)


def answers_differ(direct, proxied):
    return (f"answers directly {direct.answers}, through the proxy {proxied.answers}"
            if direct.answers != proxied.answers else "")


def test_upstream_passes_the_core_push_checks(direct_run):
    by_id = direct_run.by_id()
    failing = [i for i in conformance.CORE_PUSH if by_id[i].status != "pass"]
    assert not failing, f"the registry itself fails core push checks {failing}:\n{listing(direct_run)}"


@pytest.mark.parametrize("check_id", conformance.CHECK_IDS)
def test_check_passes_through_proxy_as_directly(check_id, direct_run, proxy_run):
    direct = direct_run.by_id()[check_id]
    proxied = proxy_run.by_id()[check_id]
    if direct.status == "fail":
        assert proxied.status == "fail" and not answers_differ(direct, proxied), \
            (f"the upstream fails it ({direct.reason}); through the proxy: {proxied.status} "
             f"{proxied.reason} {answers_differ(direct, proxied)}")
        return  # held to what the upstream does: the same failure, the same statuses
    if direct.status == "skip":
        # Not run directly (the suite's RunOnlyIf); through the proxy it must not run either,
        # else the proxy answered an earlier step differently.
        assert proxied.status == "skip", (f"skipped directly ({direct.reason}), "
                                          f"{proxied.status} through the proxy: {proxied.reason}")
        return
    assert proxied.status == "pass", f"{direct.title}\nthrough the proxy: {proxied.reason}"


def test_proxy_passes_every_check_the_upstream_passes(direct_run, proxy_run):
    missing = sorted(set(direct_run.passed()) - set(proxy_run.passed()))
    assert not missing, (f"passed directly, not through the proxy: {missing}\n"
                         f"directly:\n{listing(direct_run)}\nthrough the proxy:\n{listing(proxy_run)}")


def test_every_request_answered_as_directly(direct_run, proxy_run):
    differ = {d.id: answers_differ(d, p) for d, p in zip(direct_run.results, proxy_run.results)
              if answers_differ(d, p)}
    assert not differ, differ


def test_locations_stay_on_the_server_asked(direct_run, proxy_run):
    # The control: the registry's own Locations name the registry.
    assert not direct_run.foreign_locations, direct_run.foreign_locations
    # Through the proxy every upload step and pull of a Location comes back through it.
    assert not proxy_run.foreign_locations, \
        f"Locations through the proxy that lead elsewhere: {proxy_run.foreign_locations}"


def test_oci_subject_is_passed_through_not_invented(direct_run, proxy_run):
    assert direct_run.by_id()["manifest-put-subject"].status == "pass", listing(direct_run)
    assert proxy_run.by_id()["manifest-put-subject"].status == "pass", listing(proxy_run)
    # Each run pushed its own subject: compare what the header said about it, not the digest.
    def said(run):
        if run.oci_subject is None:
            return "absent"
        return "the subject" if run.oci_subject == run.subject_digest else f"other: {run.oci_subject}"
    assert said(proxy_run) == said(direct_run), \
        f"OCI-Subject directly: {said(direct_run)}, through the proxy: {said(proxy_run)}"
