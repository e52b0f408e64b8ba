"""Who may use the controller: users, console sessions and API tokens (``credentials``),
the account service the API and the CLI share (``users``), the authorization policy
(``access``), CSRF defences (``csrf``), login throttling (``login_limit``) and their
tables (``tables``). Imports nothing: import the module you need."""
