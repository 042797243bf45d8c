"""A whole Flask app on `cache.integrations.flask`; every line is a route or the adapter's set-up.

Sign-in with a fresh session id (no fixation), a privilege change that rotates the id,
logout everywhere, a rate-limited route, a cached route, an enqueue route and a
live-events page. Run it as in production: `gunicorn -c examples/gunicorn.conf.py
examples.flask_app:app` (2 threaded workers, `--preload`, streams ended on SIGTERM).
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from flask import Flask, jsonify, request, session
from flask.typing import ResponseReturnValue

from cache.appcache import cached
from cache.integrations.flask import (
    current_user,
    event_stream,
    init_app,
    login,
    logout_everywhere,
    rate_limit,
    rotate_session,
)
from jobs.reports import enqueue_report

app = Flask(__name__)
init_app(app)  # server-side `session` and the rate limiter, on the PRIMARY Redis
LIVE_PAGE = Path(__file__).with_name("live.html").read_text()


@cached(ttl_s=60)
def summary() -> dict[str, str]:
    return {"generated_at": dt.datetime.now(dt.UTC).isoformat()}  # stands in for a slow query


@app.get("/")
def live_page() -> ResponseReturnValue:
    return LIVE_PAGE  # static: answers while Redis is down


@app.post("/login")
@rate_limit(limit=5, window_s=60, scope="login")
def sign_in() -> ResponseReturnValue:
    login(request.form["user"], {"role": "member"})  # call it once your IdP vouched for the user
    return jsonify(user=current_user(), data=dict(session))


@app.get("/me")
@rate_limit("user")
def me() -> ResponseReturnValue:
    return jsonify(user=current_user(), data=dict(session))


@app.post("/promote")
def promote() -> ResponseReturnValue:
    rotate_session({"role": "admin"})  # a new id, the old one dead at once (401 when signed out)
    return jsonify(user=current_user(), data=dict(session))


@app.post("/logout-everywhere")
def everywhere() -> ResponseReturnValue:
    return jsonify(ended=logout_everywhere())  # every session of the user (401 when signed out)


@app.get("/summary")
@rate_limit("ip")
def cached_summary() -> ResponseReturnValue:
    return jsonify(summary())  # from the cache for 60 s; computed anyway while it is down


@app.post("/reports")
@rate_limit("user")
def new_report() -> ResponseReturnValue:
    return jsonify(job_id=enqueue_report("users", {"status": "active"}, requested_by=current_user())), 202


@app.get("/events")
def events() -> ResponseReturnValue:
    return event_stream(current_user())  # the user from the session, never from the request
