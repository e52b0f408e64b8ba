"""The device registry: its tables (``tables``), the pure online/offline rules
(``liveness``) and the stored desired/reported documents (``shadows``). Imports nothing:
import the module you need."""
