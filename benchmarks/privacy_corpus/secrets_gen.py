"""Secrets in the shapes real services issue them (random bodies, deterministic per seed)."""

from __future__ import annotations

import base64
import json
import random
import string

ALNUM = string.ascii_letters + string.digits
B64 = ALNUM + "+/"
B64URL = ALNUM + "-_"


def chars(rng: random.Random, alphabet: str, n: int) -> str:
    """``n`` characters drawn from ``alphabet``."""
    return "".join(rng.choice(alphabet) for _ in range(n))


def b64url_bytes(rng: random.Random, n: int) -> str:
    """``n`` random bytes, base64url without padding (the JWK encoding)."""
    raw = bytes(rng.getrandbits(8) for _ in range(n))
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def aws_key_id(rng: random.Random) -> str:
    """An AWS access key id (``AKIA`` / ``ASIA`` and 16 base32 characters)."""
    return rng.choice(("AKIA", "AKIA", "ASIA")) + chars(rng, string.ascii_uppercase + "234567", 16)


def aws_secret(rng: random.Random) -> str:
    """A 40-character AWS secret access key."""
    return chars(rng, B64, 40)


def cloud_key(rng: random.Random, kind: str) -> str:
    """A token in the shape ``kind`` (github, github_pat, slack, stripe, google, openai ...)."""
    makers = {
        "aws": lambda: aws_key_id(rng),
        "github": lambda: rng.choice(("ghp_", "gho_", "ghs_")) + chars(rng, ALNUM, 36),
        "github_pat": lambda: "github_pat_" + chars(rng, ALNUM, 22) + "_" + chars(rng, ALNUM, 59),
        "slack": lambda: (
            rng.choice(("xoxb-", "xoxp-"))
            + str(rng.randint(10**10, 10**12))
            + "-"
            + str(rng.randint(10**10, 10**12))
            + "-"
            + chars(rng, ALNUM, 24)
        ),
        "stripe": lambda: rng.choice(("sk_live_", "rk_live_")) + chars(rng, ALNUM, 24),
        "google": lambda: "AIza" + chars(rng, B64URL, 35),
        "openai": lambda: "sk-proj-" + chars(rng, B64URL, 48),
        "openai_legacy": lambda: "sk-" + chars(rng, ALNUM, 48),
        "anthropic": lambda: "sk-ant-api03-" + chars(rng, B64URL, 93) + "AA",
        "huggingface": lambda: "hf_" + chars(rng, ALNUM, 34),
        "gitlab": lambda: "glpat-" + chars(rng, B64URL, 20),
        "sendgrid": lambda: "SG." + chars(rng, B64URL, 22) + "." + chars(rng, B64URL, 43),
    }
    return makers[kind]()


def hex_token(rng: random.Random, n: int = 40) -> str:
    """``n`` lowercase hex characters."""
    return chars(rng, "0123456789abcdef", n)


def opaque_token(rng: random.Random, n: int = 32) -> str:
    """A high-entropy token with no vendor prefix."""
    return chars(rng, ALNUM, n)


def jwt(rng: random.Random, subject: str) -> str:
    """A signed-looking JWT (HS256 or RS256 header, a small payload, a random signature)."""
    alg = rng.choice(("HS256", "RS256", "ES256"))
    header = {"alg": alg, "typ": "JWT"}
    payload = {"sub": subject, "iat": 1760000000 + rng.randint(0, 10**7), "scope": "read write"}

    def enc(obj: object) -> str:
        raw = json.dumps(obj, separators=(",", ":")).encode()
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

    sig = b64url_bytes(rng, 32 if alg == "HS256" else 64)
    return f"{enc(header)}.{enc(payload)}.{sig}"


PEM_HEADS = {
    "RSA PRIVATE KEY": "MIIEpAIBAAKCAQEA",
    "PRIVATE KEY": "MIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQ",
    "EC PRIVATE KEY": "MHcCAQEEI",
    "OPENSSH PRIVATE KEY": "b3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQAAAAAAAAABAAAAMwAAAAtzc2gtZW",
    "DSA PRIVATE KEY": "MIIBuwIBAAKBgQD",
}


def pem(rng: random.Random, label: str, lines: int = 6) -> str:
    """A PEM block labelled ``label`` with a plausible DER/OpenSSH prefix and random body."""
    body = PEM_HEADS[label] + chars(rng, B64, 64 * lines - len(PEM_HEADS[label]))
    rows = [body[i : i + 64] for i in range(0, len(body), 64)]
    return f"-----BEGIN {label}-----\n" + "\n".join(rows) + f"\n-----END {label}-----"


def jwk_private(rng: random.Random) -> dict[str, str]:
    """A private JWK (RSA with d/p/q/dp/dq/qi, or EC P-256 with d)."""
    if rng.random() < 0.5:
        return {
            "kty": "EC",
            "crv": "P-256",
            "x": b64url_bytes(rng, 32),
            "y": b64url_bytes(rng, 32),
            "d": b64url_bytes(rng, 32),
            "kid": chars(rng, ALNUM, 8),
        }
    return {
        "kty": "RSA",
        "kid": chars(rng, ALNUM, 8),
        "n": b64url_bytes(rng, 128),
        "e": "AQAB",
        "d": b64url_bytes(rng, 128),
        "p": b64url_bytes(rng, 64),
        "q": b64url_bytes(rng, 64),
        "dp": b64url_bytes(rng, 64),
        "dq": b64url_bytes(rng, 64),
        "qi": b64url_bytes(rng, 64),
    }


WORDS = (
    "harbor",
    "violet",
    "cactus",
    "meteor",
    "quartz",
    "lantern",
    "pepper",
    "walrus",
    "falcon",
    "ginger",
    "tundra",
    "oyster",
    "marble",
    "cobalt",
    "saffron",
    "nimbus",
    "Sommer",
    "Winter",
    "Fenster",
    "Kaffee",
    "soleil",
    "fromage",
    "playa",
    "naranja",
    "fiets",
    "molen",
)
SYMBOLS = "!#$%&*?@+-_."


def password(rng: random.Random) -> str:
    """A realistic user password: word+digits+symbol, a random string or a passphrase."""
    style = rng.randrange(4)
    if style == 0:
        word = rng.choice(WORDS)
        return word.capitalize() + str(rng.randint(10, 2030)) + rng.choice(SYMBOLS)
    if style == 1:
        return chars(rng, ALNUM + SYMBOLS, rng.randint(10, 16))
    if style == 2:
        sep = rng.choice("-._")
        return sep.join(rng.sample(WORDS, 3)) + str(rng.randint(1, 99))
    leet = rng.choice(WORDS).replace("a", "@").replace("o", "0").replace("e", "3")
    return leet + rng.choice(SYMBOLS) + chars(rng, ALNUM, 4)


def pin(rng: random.Random) -> str:
    """A 4- or 6-digit PIN that is not a trivial sequence."""
    while True:
        value = "".join(rng.choice(string.digits) for _ in range(rng.choice((4, 4, 6))))
        if len(set(value)) > 2:
            return value


def basic_auth(user: str, secret: str) -> str:
    """The base64 credentials of an HTTP Basic header."""
    return base64.b64encode(f"{user}:{secret}".encode()).decode()
