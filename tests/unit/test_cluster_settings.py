"""REDIS_CLUSTER_NODES and CACHE_REDIS_CLUSTER_NODES: parsing, config errors, which role uses what."""

from __future__ import annotations

import pytest

from cache.cluster import cluster_of, nodes_setting
from cache.connections import Role, address_setting, uses_sentinel
from cache.errors import ConfigError
from cache.settings import Cluster, Settings


def test_nodes_parse_into_a_primary_cluster() -> None:
    settings = Settings.from_env({"REDIS_CLUSTER_NODES": " 10.0.0.1:7000, redis-b:7001,[::1]:7002 "})
    assert settings.cluster == Cluster(nodes=(("10.0.0.1", 7000), ("redis-b", 7001), ("::1", 7002)))
    assert settings.cache_cluster is None
    assert settings.sentinel is None


def test_unset_means_no_cluster() -> None:
    settings = Settings.from_env({})
    assert settings.cluster is None and settings.cache_cluster is None
    assert cluster_of(settings, cache=False) is None and cluster_of(settings, cache=True) is None


@pytest.mark.parametrize(
    ("name", "value", "item"),
    [
        ("REDIS_CLUSTER_NODES", "10.0.0.1", "'10.0.0.1'"),
        ("REDIS_CLUSTER_NODES", "a:7000,,b:7001", "''"),
        ("REDIS_CLUSTER_NODES", "a:70000", "'a:70000'"),
        ("REDIS_CLUSTER_NODES", "redis://a:7000", "'redis://a:7000'"),
        ("CACHE_REDIS_CLUSTER_NODES", "a:port", "'a:port'"),
        ("CACHE_REDIS_CLUSTER_NODES", ":7000", "':7000'"),
    ],
)
def test_a_bad_node_list_names_the_variable_and_the_item(name: str, value: str, item: str) -> None:
    with pytest.raises(
        ConfigError, match=rf"{name} must be a comma-separated list of host:port, got item {item}"
    ):
        Settings.from_env({name: value})


@pytest.mark.parametrize("value", ["::1:7000", "fe80::1:7000", "[::1:7000", "::1]:7000"])
def test_an_ipv6_node_without_brackets_is_refused_not_guessed(value: str) -> None:
    # `::1:7000` is the address ::1 on port 7000, or the address ::1:7000 with no port.
    with pytest.raises(
        ConfigError, match=r"REDIS_CLUSTER_NODES: an IPv6 address goes in brackets \(\[::1\]:7000\)"
    ):
        Settings.from_env({"REDIS_CLUSTER_NODES": value})
    settings = Settings.from_env({"REDIS_CLUSTER_NODES": "[::1]:7000,[fe80::1]:7001"})
    assert settings.cluster is not None and settings.cluster.nodes == (("::1", 7000), ("fe80::1", 7001))


def test_cluster_and_sentinel_for_the_primary_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="REDIS_CLUSTER_NODES and REDIS_SENTINELS are exclusive"):
        Settings.from_env({"REDIS_CLUSTER_NODES": "a:7000", "REDIS_SENTINELS": "s:26379"})


def test_tls_is_a_checked_boolean_for_both_clusters() -> None:
    settings = Settings.from_env(
        {"REDIS_CLUSTER_NODES": "a:7000", "CACHE_REDIS_CLUSTER_NODES": "c:7000", "REDIS_CLUSTER_TLS": "yes"}
    )
    assert settings.cluster is not None and settings.cluster.tls
    assert settings.cache_cluster is not None and settings.cache_cluster.tls
    with pytest.raises(ConfigError, match="REDIS_CLUSTER_TLS must be a boolean"):
        Settings.from_env({"REDIS_CLUSTER_NODES": "a:7000", "REDIS_CLUSTER_TLS": "maybe"})


def test_the_cache_shares_the_primary_cluster_unless_told_otherwise() -> None:
    shared = Settings.from_env({"REDIS_CLUSTER_NODES": "a:7000"})
    assert cluster_of(shared, cache=True) == shared.cluster
    assert address_setting(Role.CACHE, shared) == "REDIS_CLUSTER_NODES"
    own_server = Settings.from_env({"REDIS_CLUSTER_NODES": "a:7000", "CACHE_REDIS_URL": "redis://c:6380/0"})
    assert cluster_of(own_server, cache=True) is None
    assert address_setting(Role.CACHE, own_server) == "CACHE_REDIS_URL"
    assert address_setting(Role.PRIMARY, own_server) == "REDIS_CLUSTER_NODES"


def test_a_cache_cluster_of_its_own_beside_a_single_primary_or_sentinel() -> None:
    settings = Settings.from_env({"CACHE_REDIS_CLUSTER_NODES": "c:7000", "REDIS_SENTINELS": "s:26379"})
    assert cluster_of(settings, cache=False) is None
    assert cluster_of(settings, cache=True) == Cluster(nodes=(("c", 7000),))
    assert nodes_setting(settings, cache=True) == "CACHE_REDIS_CLUSTER_NODES"
    assert address_setting(Role.CACHE, settings) == "CACHE_REDIS_CLUSTER_NODES"
    assert uses_sentinel(Role.PRIMARY, settings) and not uses_sentinel(Role.CACHE, settings)


def test_repeated_nodes_are_kept_once() -> None:
    settings = Settings.from_env({"REDIS_CLUSTER_NODES": "a:7000,a:7000,b:7000"})
    assert settings.cluster == Cluster(nodes=(("a", 7000), ("b", 7000)))
