"""The OCI distribution client: RegistryClient (client.py) over transport, upload, download, auth, retries.

The only package that imports httpx.
"""
