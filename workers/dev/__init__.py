"""The local development stack behind `make run`: redis-servers, a mail catcher, supervisord."""
