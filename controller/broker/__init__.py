"""The MQTT broker side of the controller: the broker it can start itself (``embedded``,
the zero-setup default), Mosquitto's password and ACL files (``mosquitto_auth``) and the
devices' broker logins (``tables``). Imports nothing: import the module you need."""
