"""KRYONIX worker processes: RQ worker/job classes, scheduler, maintenance and the operator CLI."""
