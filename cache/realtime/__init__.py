"""Real-time events: publish over pub/sub with a bounded stream for replay, sync and
asyncio subscribers, Server-Sent Events framing.
"""

from typing import TYPE_CHECKING

from cache.exports import lazy_exports

if TYPE_CHECKING:
    from cache.realtime.async_service import AsyncRealtimeService, AsyncSubscriber
    from cache.realtime.envelope import Event, InvalidEnvelope, InvalidEvent, Subscription, to_sse
    from cache.realtime.service import RealtimeService
    from cache.realtime.subscriber import Subscriber

__all__ = [
    "AsyncRealtimeService",
    "AsyncSubscriber",
    "Event",
    "InvalidEnvelope",
    "InvalidEvent",
    "RealtimeService",
    "Subscriber",
    "Subscription",
    "to_sse",
]

__getattr__ = lazy_exports(
    __name__,
    {
        "RealtimeService": "cache.realtime.service",
        "AsyncRealtimeService": "cache.realtime.async_service",
        "AsyncSubscriber": "cache.realtime.async_service",
        "Subscriber": "cache.realtime.subscriber",
        "Event": "cache.realtime.envelope",
        "InvalidEnvelope": "cache.realtime.envelope",
        "InvalidEvent": "cache.realtime.envelope",
        "Subscription": "cache.realtime.envelope",
        "to_sse": "cache.realtime.envelope",
    },
)
