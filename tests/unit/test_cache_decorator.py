"""Keys the `cached` decorator derives from call arguments; no Redis (marker `cache`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from cache.appcache.decorator import MAX_READABLE_ARGS, CachedFunction
from cache.appcache.service import CacheService, cached

pytestmark = pytest.mark.cache


def no_service() -> CacheService:
    raise AssertionError("deriving a key must not touch the cache")


def wrap(func: Callable[..., Any], key: Any = None) -> CachedFunction[Any, Any]:
    return CachedFunction(no_service, func, None, key)


def report(company_id: int, period: str = "month", *, fmt: str = "pdf") -> str:
    return f"{company_id}-{period}-{fmt}"


def test_positional_keyword_and_default_calls_share_one_key() -> None:
    fn = wrap(report)
    key = fn.key_for(7)
    assert key == f'{__name__}.report:{{"company_id":7,"fmt":"pdf","period":"month"}}'
    assert fn.key_for(7, "month") == key
    assert fn.key_for(company_id=7, period="month", fmt="pdf") == key


def test_different_arguments_give_different_keys() -> None:
    fn = wrap(report)
    keys = {fn.key_for(7), fn.key_for(8), fn.key_for(7, "year"), fn.key_for(7, fmt="csv"), fn.key_for("7")}
    assert len(keys) == 5


def test_same_arguments_of_different_functions_differ() -> None:
    def other(company_id: int, period: str = "month", *, fmt: str = "pdf") -> str:
        return ""

    assert wrap(report).key_for(1) != wrap(other).key_for(1)


def test_long_arguments_are_hashed() -> None:
    key = wrap(report).key_for(1, "x" * (MAX_READABLE_ARGS * 2))
    assert key.startswith(f"{__name__}.report:sha256:")
    assert len(key) < 200
    assert wrap(report).key_for(1, "x" * (MAX_READABLE_ARGS * 2) + "y") != key


def test_template_key_uses_bound_arguments_with_defaults() -> None:
    fn = wrap(report, key="report:{company_id}:{period}")
    assert fn.key_for(3) == "report:3:month"
    assert fn.key_for(company_id=3, period="day") == "report:3:day"


def test_callable_key() -> None:
    fn = wrap(report, key=lambda company_id, *a, **k: f"r{company_id}")
    assert fn.key_for(5, "day") == "r5"


def test_template_naming_an_unknown_parameter_is_a_clear_error() -> None:
    fn = wrap(report, key="report:{customer}")
    with pytest.raises(ValueError, match=r"key template 'report:\{customer\}' .* names unknown 'customer'"):
        fn.key_for(1)


def test_arguments_that_do_not_fit_the_function() -> None:
    with pytest.raises(TypeError):
        wrap(report).key_for(1, 2, 3)


def test_unserializable_arguments_ask_for_a_key() -> None:
    with pytest.raises(TypeError, match=r"cannot derive a cache key .* pass key="):
        wrap(report).key_for(object())


def test_callable_key_must_return_a_str() -> None:
    fn = wrap(report, key=lambda *a, **k: 42)
    with pytest.raises(TypeError, match="cache key must be a str"):
        fn.key_for(1)


def test_methods_leave_the_instance_out_of_the_default_key() -> None:
    class Repo:
        def find(self, item_id: int) -> int:
            return item_id

    fn = wrap(Repo.find)
    bound = fn.__get__(Repo(), Repo)
    assert bound.key_for(4) == wrap(Repo.find).__get__(Repo(), Repo).key_for(4)
    assert bound.key_for(4).endswith(':{"item_id":4}')


def test_decorator_keeps_name_and_doc() -> None:
    def documented(x: int) -> int:
        """Doc."""
        return x

    fn = wrap(documented)
    assert fn.__name__ == "documented"
    assert fn.__doc__ == "Doc."
    assert fn.uncached is documented


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"ttl_s": 0}, ValueError, "ttl_s must be greater than 0"),
        ({"ttl_s": "1h"}, TypeError, "number of seconds"),
        ({"key": 42}, TypeError, "key must be a template string or a callable"),
        ({"namespace": "a b"}, ValueError, "namespace must be"),
    ],
)
def test_module_decorator_rejects_bad_arguments_at_decoration(
    kwargs: dict[str, Any], error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        cached(**kwargs)


def test_module_decorator_connects_nothing_at_import_or_decoration() -> None:
    @cached(ttl_s=5)
    def f(x: int) -> int:
        return x

    assert f.key_for(1).endswith(':{"x":1}')
