"""Helpers the tests share: real servers (mosquitto, moto, Azurite, HTTP file server), edge agents,
signed artifacts and federation fixtures."""
