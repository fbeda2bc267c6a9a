"""The OCI distribution client: RegistryClient (client.py), auth and tokens, credentials, retries.

The only package that imports httpx.
"""
