"""The Flask app the adapter tests serve under gunicorn: only `cache.integrations.flask`."""

from __future__ import annotations

import json
import os

from flask import Flask, jsonify, request, session
from flask.typing import ResponseReturnValue

from cache.integrations.flask import (
    backchannel_logout_view,
    event_stream,
    init_app,
    login,
    logout,
    logout_everywhere,
    rate_limit,
    request_ip,
    rotate_session,
    session_user_id,
)
from jobs.email import enqueue_email

ISSUER = "https://sso.example.test/realms/kryonix"
AUDIENCE = "kryonix-web"
LOGIN_URL = "https://x.example/login"
DEMO_USER = "demo"


def create_app() -> Flask:
    """Session, rate-limit, enqueue, SSE and back-channel routes; `/static` never touches Redis."""
    app = Flask(__name__)
    init_app(app)

    @app.get("/static")
    def static_page() -> ResponseReturnValue:
        return "static"

    @app.get("/me")
    def me() -> ResponseReturnValue:
        return jsonify(user=session_user_id(), data=dict(session))

    @app.post("/login")
    def sign_in() -> ResponseReturnValue:
        login(request.form["user"], {"role": "member"}, idp_sid=request.form.get("idp_sid"))
        return "", 204

    @app.post("/theme")
    def theme() -> ResponseReturnValue:
        session["theme"] = request.form["theme"]
        return "", 204

    @app.post("/sudo")
    def sudo() -> ResponseReturnValue:
        rotate_session({"role": "admin"})  # signed out: 401
        return "", 204

    @app.post("/logout")
    def sign_out() -> ResponseReturnValue:
        logout()
        return "", 204

    @app.post("/logout-everywhere")
    def sign_out_everywhere() -> ResponseReturnValue:
        return jsonify(ended=logout_everywhere())

    @app.get("/limited")
    @rate_limit(limit=3, window_s=60)
    def limited() -> ResponseReturnValue:
        return jsonify(ip=request_ip())

    @app.get("/per-user")
    @rate_limit("user")
    def per_user() -> ResponseReturnValue:
        return "ok"

    @app.get("/api")
    @rate_limit("api")
    def api() -> ResponseReturnValue:
        return "ok"

    @app.get("/events")
    def events() -> ResponseReturnValue:
        user_id = session_user_id()
        if user_id is None:
            return "", 401
        keepalive_s = float(os.environ.get("TEST_KEEPALIVE_S", "15"))
        return event_stream(user_id, keepalive_s=keepalive_s)

    @app.post("/welcome")
    def welcome() -> ResponseReturnValue:  # an enqueue: never reads the session
        job_id = enqueue_email("ana@example.com", "welcome", {"name": "Ana", "login_url": LOGIN_URL})
        return jsonify(job=job_id), 202

    @app.get("/demo-events")
    def demo_events() -> ResponseReturnValue:  # a stream that reads no session: Redis down reaches it
        return event_stream(DEMO_USER)

    jwks = os.environ.get("TEST_JWKS")
    if jwks:
        view = backchannel_logout_view(jwks=json.loads(jwks), issuer=ISSUER, audience=AUDIENCE)
        app.add_url_rule("/backchannel-logout", view_func=view, methods=["POST"])
    return app
