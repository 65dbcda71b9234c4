"""Fake but well-formed secrets, assembled at import so no file of this repository holds one whole.

The private key is generated on the spot: a real RSA key that guards nothing.
"""

from __future__ import annotations

import functools

AWS_KEY_ID = "AKIA" + "Q3EGRIQS5XJ2TQ7V"
AWS_SECRET = "q8Vt2Lm" + "Xk4Rz9Pw/Hd7Ny3Bc6Fj1Gs5Kw0Ae+Uo2Ti8Yr"
GITHUB_TOKEN = "ghp_" + "R7mK2xQ9vL4pT8wN3bZ6cY1dF5gH0jS2aE4u"
#: Made up by "the model" in scripted sessions: it must be flagged in the patch, and kept there.
INVENTED_TOKEN = "ghp_" + "Zq4Wm8Xr2Tn6Yp0Lc3Vb7Ks1Hd5Gf9Ja2Eu6"


@functools.cache
def private_key_pem() -> str:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()
    ).decode()


def key_body_lines() -> list[str]:
    """The base64 lines of the private key: none may leave a run."""
    return [line for line in private_key_pem().splitlines() if not line.startswith("-----")]


def values() -> list[str]:
    """Every secret value a repository of these fakes holds."""
    return [AWS_KEY_ID, AWS_SECRET, GITHUB_TOKEN, *key_body_lines()]
