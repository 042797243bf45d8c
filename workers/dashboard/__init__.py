"""rq-dashboard, made safe to open: JSON only, escaped templates, Host/Origin guard, CSP."""
