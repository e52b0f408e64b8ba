"""Credentials: API keys and tokens, JWTs, private keys, connection strings, passwords.

Categories ``aws_access_key``, ``api_token``, ``jwt``, ``private_key``,
``connection_string`` and ``password`` (all restricted); see the package docstring for
what each covers. Each ``*_RULE`` is an RE2 pattern and its ``on_*`` function the handler
that validates a match.

Key names (issue 13): any key whose name holds a password word of five languages
(password, passwd, pwd, passphrase, Passwort, Kennwort, contraseña, clave, wachtwoord,
mot_de_passe, mdp, credential) has a password as its value unless it is a placeholder;
``*_PIN`` 4-12 digits; a secret key (token, secret, key, auth, private) with a value that
is not high-entropy but mixes letters and digits is an uncertain ``api_token``. A
credential's settings (``PASSWORD_HASHER``, ``auth_method``, ``*_min_length``, ``*_file``)
and references (``${X:?required}``, ``{{ x }}``, ``!vault``) are not values. Placeholders
include a credential word as the value ("IhrPasswort", "Password123") and the default
passwords of manuals (``data/placeholders.txt``).
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
from collections import Counter
from typing import Final

from edge_agent.routing.sensitivity.matching import Handler, Hit, Scan
from edge_agent.routing.sensitivity.terms import alternation, entries

# --------------------------------------------------------------------------------------
# Validators (pure functions on candidate strings).

_PLACEHOLDER_VALUES: Final[frozenset[str]] = frozenset(entries("placeholders.txt"))
"""Values of a key that are placeholders, not secrets (``data/placeholders.txt``)."""


_PLACEHOLDER_PREFIXES: Final = (
    "your", "my_", "my-", "...", "***", "•••", "os.", "votre", "dein_", "deine_",
    "jouw_", "tu_contrase", "su_contrase",
)  # fmt: skip


_TEMPLATE: Final = re.compile(
    r"\$\{|\$\(|\$[a-z_][a-z0-9_]*\Z|<.*>\Z|\{.*\}\Z|%[a-z_][a-z0-9_]*%\Z|\[.*\]\Z|\(.*\)\Z|•"
)
"""Template references and bracketed stand-ins: ``${X}``, ``$X``, ``<x>``, ``{{x}}``,
``%X%``, ``[redacted]``, ``(hidden)`` (lower case)."""


def is_placeholder(value: str) -> bool:
    """A placeholder, not a secret: ``<YOUR_PASSWORD>``, ``${DB_PASSWORD}``, ``****``,
    ``xxx``, ``changeme``, ``your_token_here``, ``votre_mot_de_passe``, ``aaaa``."""
    v = value.strip("\"'`").lower()
    if not v or v in _PLACEHOLDER_VALUES:
        return True
    if v.startswith(_PLACEHOLDER_PREFIXES) or _TEMPLATE.match(v) or _MASK.fullmatch(v):
        return True
    if "xxxx" in v or "****" in v or "your_" in v or "your-" in v or "_here" in v:
        return True
    plain = v.translate(_LEET)
    if _SELF_NAMED.fullmatch(plain):
        return True  # "IhrPasswort", "VotreMotDePasse", "Password123", "P@ssw0rd!"
    if _WORD_DIGITS.fullmatch(v) and v.rstrip("0123456789") in _PLACEHOLDER_VALUES:
        return True  # "example123", "changeme123", "admin1"
    if "/" in v and all(
        p and (p in _PLACEHOLDER_VALUES or _SELF_NAMED.fullmatch(p)) for p in v.split("/")
    ):
        return True  # "admin/password", "user/pass": a default pair
    return len(set(v)) <= 2


_WORD_DIGITS: Final = re.compile(r"[a-z_]+[0-9]{1,4}")

_MASK: Final = re.compile(r"x{3,}[x\W_]*[0-9]{0,4}[x\W_]*")
"""A mask of x's, at most four digits shown ("xxx", "XXXX-XXXX-1234"); "xxx22223" is not."""

_LEET: Final = str.maketrans({"0": "o", "@": "a", "$": "s", "3": "e", "4": "a", "5": "s"})
"""Digits and signs written for letters in stand-in passwords ("P@ssw0rd", "S3cr3t")."""


_SELF_NAMED: Final = re.compile(
    r"(?:your|my|ihr|dein|mein|votre|ton|mon|tu|su|mi|uw|jouw|new|neues|nouveau|nueva|"
    r"example|sample|test|dummy|fake|some|the)?[_\-]?(?:password|passwort|passwd|pass|pwd|"
    r"contrase(?:ñ|n)a|clave|mot[_\-]?de[_\-]?passe|motdepasse|wachtwoord|kennwort|secret|"
    r"token|api[_\-]?key)(?:1|12|123|1234|12345|123456|0|!)?"
)
"""A value made of a credential word, maybe with "your"/"Ihr"/"votre" before it and
"123" after it: a stand-in, not a secret."""


_IDENT_PATH: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)+\Z")


_WORDY: Final = re.compile(r"[a-z]{9}|[A-Z]{9}")
"""Nine letters of one case in a row: a word or an identifier, not a random token."""


def _entropy(value: str) -> float:
    n = len(value)
    return -sum(c / n * math.log2(c / n) for c in Counter(value).values())


def high_entropy(value: str) -> bool:
    """A token-like value: long, letters and digits, several bits per character."""
    v = value.strip("\"'`")
    if len(v) < 16 or is_placeholder(v) or _IDENT_PATH.match(v):
        return False
    has_digit = any(c.isdigit() for c in v)
    has_alpha = any(c.isalpha() for c in v)
    if not (has_digit and has_alpha) or _WORDY.search(v):
        return False
    return _entropy(v) >= 3.0


_SK_PREFIX: Final = re.compile(r"\Ask-(?:ant-[a-z]+[0-9]{2}-|proj-|svcacct-|admin-)?")


def _jwt_ok(token: str) -> bool:
    """The first segment is base64url of a JSON object with an ``alg`` member."""
    header = token.split(".", 1)[0]
    if len(header) > 4096:
        return False
    try:
        raw = base64.urlsafe_b64decode(header + "=" * (-len(header) % 4))
        if not raw.lstrip().startswith(b"{") or b'"alg"' not in raw:
            return False
        obj = json.loads(raw)
    except (binascii.Error, ValueError, RecursionError):
        return False
    return isinstance(obj, dict) and "alg" in obj


# --------------------------------------------------------------------------------------
# Rules and their handlers.

PREFIXED_RULE = (
    r"\b(?:"
    r"(?P<aws>(?:AKIA|ASIA|ABIA|ACCA|AGPA|AIDA|AIPA|ANPA|ANVA|AROA|APKA|ASCA)[A-Z0-9]{16})"
    r"|(?P<gcp>AIza[0-9A-Za-z_\-]{35})"
    r"|(?P<github>gh[pousr]_[A-Za-z0-9]{30,}|github_pat_[A-Za-z0-9_]{22,})"
    r"|(?P<gitlab>gl(?:pat|dt|rt|ptt|soat)-[A-Za-z0-9_\-]{20,})"
    r"|(?P<slack>xox[abposr]-[A-Za-z0-9\-]{10,}|xapp-[0-9]-[A-Za-z0-9\-]{10,})"
    r"|(?P<stripe>(?:sk|rk)_(?:live|test)_[A-Za-z0-9]{16,}|whsec_[A-Za-z0-9]{24,})"
    r"|(?P<sk>sk-(?:ant-[a-z]{2,8}[0-9]{2}-|proj-|svcacct-|admin-)?[A-Za-z0-9_\-]{20,})"
    r"|(?P<hf>hf_[A-Za-z0-9]{30,})"
    r"|(?P<npm>npm_[A-Za-z0-9]{36})"
    r"|(?P<gauth>ya29\.[0-9A-Za-z_\-]{20,})"
    r"|(?P<sendgrid>SG\.[A-Za-z0-9_\-]{16,}\.[A-Za-z0-9_\-]{16,})"
    r"|(?P<jwt>e[wy][A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]{4,}\.[A-Za-z0-9_\-]*)"
    r")"
    r"|(?P<slackhook>hooks\.slack\.com/services/[A-Za-z0-9]+/[A-Za-z0-9]+/[A-Za-z0-9]+)"
    r"|(?P<sas>[?&]sig=[A-Za-z0-9%+/]{20,}={0,2})"
)


PEM_RULE = r"-----BEGIN[A-Z0-9 ]*PRIVATE KEY(?: BLOCK)?-----|PuTTY-User-Key-File-[0-9]+:"


_KEYNAME: Final = "(?:" + alternation("secret_key_names.txt") + ")"
"""Words that make a key name a secret's (``data/secret_key_names.txt``)."""

ASSIGN_RULE = (
    r"(?i)(?P<key>[a-z0-9_.\-]*" + _KEYNAME + r"[a-z0-9_.\-]*)[\"']?\s{0,3}"
    r"(?::=|=>|=|:)\s{0,3}(?:[\"'`]|b[\"']|r[\"'])?(?P<scheme>(?:bearer|basic|token|digest)\s+)?"
    r"(?P<val>[^\s\"'`,;<>(){}\[\]]{4,})"
    r"|(?P<says>\b(?:password|passcode|passphrase|pin|api\s+key|token|secret|secret\s+key)"
    r"(?:\s+(?:for|of|on)\s+\S+)?\s+(?:is|was)\s*:?\s+[\"'`]?(?P<sval>[^\s\"'`,;]{4,}))"
    r"|(?P<bearer>\bbearer\s+(?P<bval>[A-Za-z0-9\-._~+/]{16,}=*))"
    r"|(?P<cli>(?:\bmysql(?:dump|admin)?\b[^\n]*?\s-p|\bsshpass\s+-p\s*|--password[= ]|"
    r"--passwd[= ]|\blogin\b[^\n]*?\s-p\s+)[\"']?(?P<cval>[^\s\"'`-][^\s\"'`]{3,}))"
)


_AWS_SECRET: Final = re.compile(r"[A-Za-z0-9/+]{40}")


def _is_pass_key(key: str) -> bool:
    """``DB_PASS``, ``smtp-pass``, ``mqtt.pass``, ``pass`` (not ``bypass``, ``compass``)."""
    return key == "pass" or key.endswith(("_pass", "-pass", ".pass")) or "_pass_" in key


_AWS_ID: Final = re.compile(r"(?:AKIA|ASIA)[A-Z0-9]{16}")


_CONNECTION_KEYS: Final = re.compile(
    r"(?:server|data source|host|user id|uid|database|initial catalog|endpoint)\s*="
)


URLCRED_RULE = (
    r"(?i)\b[a-z][a-z0-9+.\-]+://(?P<user>[^\s:/@\"'<>]*):"
    r"(?P<pw>[^\s/\"'<>]+)@[^\s/@\"'<>?#]+"
    r"|(?i)\b(?:https?|git|ssh|ftp)://(?P<tok>[A-Za-z0-9_\-]{20,})@[^\s/\"'<>?#]+"
)


def on_prefixed(sc: Scan, m: Hit) -> None:
    kind: str | None = m.kind
    s, e = m.span(kind)
    value = sc.text[s:e]
    if kind == "aws":
        sc.add("aws_access_key", s, e)
    elif kind == "jwt":
        if _jwt_ok(value):
            sc.add("jwt", s, e)
    elif kind == "sk":
        if s and (sc.text[s - 1] in "-_." or sc.text[s - 1].isalnum()):
            return
        body = _SK_PREFIX.sub("", value)
        if (
            len(body) >= 20
            and any(c.isdigit() for c in body)
            and any(c.isupper() for c in body)
            and any(c.islower() for c in body)
        ):
            sc.add("api_token", s, e)
    elif kind == "sas":
        sc.add("api_token", s + 1, e)
    elif kind is not None:
        sc.add("api_token", s, e)


def on_pem(sc: Scan, m: Hit) -> None:
    s, e = m.span()
    text = sc.text
    if text.startswith("PuTTY", s):
        mac = text.find("Private-MAC:", e)
        if mac != -1:
            eol = text.find("\n", mac)
            e = len(text) if eol == -1 else eol
    else:
        end_marker = text.find("-----END", e)
        if end_marker != -1:
            close = text.find("-----", end_marker + 8)
            e = close + 5 if close != -1 else end_marker + 8
    sc.add("private_key", s, e)


def on_assign(sc: Scan, m: Hit) -> None:
    text = sc.text
    if m.has("key"):
        ks, ke = m.span("key")
        vs, ve = m.span("val")
        key = text[ks:ke].lower()
        value = text[vs:ve]
        if m.has("scheme"):
            _on_auth_scheme(sc, text[m.span("scheme")[0] : vs].strip().lower(), ks, vs, ve)
            return
        if text[ve : ve + 1] == "(" or is_placeholder(value):
            return
        if text[max(0, ks - 2) : ks].endswith(("${", "$", "{{", "%")) or value.startswith("!"):
            return  # "${DB_PASSWORD:?required}", "password: !vault |": references and tags
        if _CONFIG_KEY.search(key) and not high_entropy(value):
            return  # "PASSWORD_HASHER=argon2", "auth_method: scram-sha-256": settings
        if "accountkey" in key or "sharedaccesskey" in key:
            if len(value) >= 20:
                sc.add("connection_string", ks, ve)
            return
        if any(w in key for w in _PASSWORD_KEY_WORDS):
            if not (key.isalpha() and value.lower() in _PROSE_STOP):
                _on_password_value(sc, value, ks, ve)  # not "contraseña: mínimo 8 ..."
            return
        if _PIN_KEY.search(key):  # "SIM_PIN=4821": four to twelve digits
            if value.isdigit() and 4 <= len(value) <= 12 and len(set(value)) > 1:
                _on_password_value(sc, value, ks, ve)
            return
        if _is_pass_key(key):
            _on_password_value(sc, value, ks, ve)
            return
        if key.endswith(("_url", "_uri", "_file", "_path", "_name")):
            return
        if key.startswith("x-") and not any(w in key for w in ("key", "token", "secret", "auth")):
            return
        if "aws" in key and _AWS_ID.fullmatch(value):
            return  # access key ids are reported by the prefixed-credential rule
        if "aws" in key and _AWS_SECRET.fullmatch(value):
            sc.add("aws_access_key", ks, ve)
            return
        if high_entropy(value):
            sc.add("aws_access_key" if "aws" in key else "api_token", ks, ve)
        elif "." in value and any(high_entropy(part) for part in value.split(".")):
            sc.add("api_token", ks, ve)  # "hvs.CAESIJ9aK...": a prefixed token
        elif _maybe_secret(key, value):
            sc.add("api_token", ks, ve, certain=False)  # fail closed: a secret's key
    elif m.has("says"):
        s, _e = m.span("says")
        vs, ve = m.span("sval")
        value = text[vs:ve].rstrip(".!?")
        if is_placeholder(value) or (value.isalpha() and value.islower()):
            return  # "the password is incorrect", "the token is expired"
        word = text[s:vs].lower()
        if word.startswith("pin"):
            if value.isdigit():
                sc.add("password", s, vs + len(value))
        elif "pass" in word:
            sc.add("password", s, vs + len(value))
        elif high_entropy(value):
            sc.add("api_token", s, vs + len(value))
    elif m.has("bearer"):
        s, _e = m.span("bearer")
        vs, ve = m.span("bval")
        _on_auth_scheme(sc, "bearer", s, vs, ve)
    elif m.has("cli"):
        vs, ve = m.span("cval")
        if not is_placeholder(text[vs:ve]):
            sc.add("password", vs, ve)


_DIGEST_RESPONSE: Final = re.compile(r"(?i)\bresponse\s*=\s*\"?[0-9a-f]{32,128}\"?")


def _on_auth_scheme(sc: Scan, scheme: str, start: int, vs: int, ve: int) -> None:
    value = sc.text[vs:ve]
    if scheme == "digest":  # the response is a hash over the password: replayable
        eol = sc.text.find("\n", vs)
        digest = _DIGEST_RESPONSE.search(sc.text, vs, len(sc.text) if eol == -1 else eol)
        if digest is not None:
            sc.add("api_token", start, digest.end())
        return
    if is_placeholder(value):
        return
    if scheme == "basic":
        try:
            decoded = base64.b64decode(value, validate=True).decode("utf-8")
        except (binascii.Error, ValueError):
            return
        _user, sep, password = decoded.partition(":")
        if sep and password and not is_placeholder(password):
            sc.add("api_token", start, ve)
    elif high_entropy(value) or _jwt_ok(value):
        sc.add("api_token", start, ve)


_PASSWORD_KEY_WORDS: Final = (
    "password", "passwd", "pwd", "passphrase", "passwort", "kennwort", "contrase", "clave",
    "wachtwoord", "motdepasse", "mot_de_passe", "mot-de-passe", "mdp", "credential",
)  # fmt: skip
"""Key-name words whose value is a password whatever its shape (not a placeholder)."""

_PROSE_STOP: Final[frozenset[str]] = frozenset(
    w.lower() for w in entries("credential_stopwords.txt")
)
"""Words after a prose credential word that are not its value (credential_stopwords.txt)."""

_CONFIG_KEY: Final = re.compile(
    r"[_.\-](?:hasher|hash(?:ing)?(?:_?algorithm)?|algorithm|alg|policy|(?:min|max)(?:_?length)?|"
    r"length|complexity|expiry|expiration|expires|age|reset|rotation|strength|file|path|url|uri|"
    r"command|cmd|env|var|prompt|field|hint|required|enabled|type|mode|encoder|validators?|"
    r"regex|pattern|method|mechanism|scheme|provider|plugin|backend|strategy|header|"
    r"endpoint|ttl|timeout|retries|store|storage|manager|source|format|encoding)\Z"
)
"""Key names of a credential's settings, not of the credential itself."""

_PIN_KEY: Final = re.compile(r"(?:\A|[_.\-])pin(?:code)?(?:\Z|[_.\-])")

_NOT_SECRET_KEYS: Final = re.compile(
    r"(?:primary|foreign|sort|partition|cache|lookup|dict|map|hash|index|group|routing|"
    r"idempotency|object|s3|row|composite|unique|natural|public|hot|short|api_key_header|"
    r"key_?(?:id|name|type|size|length|bits|path|file|alg|algorithm|format|usage|ttl|"
    r"rotation|version|vault_url))(?:\Z|[_.\-])|(?:\A|[_.\-])(?:token_)?(?:type|ttl|"
    r"expiry|expires?_in|length|url|uri|endpoint|header|name|path|file|lifetime|"
    r"timeout|limit|count|size|enabled?)\Z"
)


def _maybe_secret(key: str, value: str) -> bool:
    """A value of a secret's key that is not high-entropy but could be a secret (letters
    and digits, eight or more characters): an uncertain finding (fail closed)."""
    if len(value) < 8 or _NOT_SECRET_KEYS.search(key) or _IDENT_PATH.match(value):
        return False
    if value.startswith(("/", "./", "http", "$")) or "://" in value or value.count(".") >= 2:
        return False
    has_digit = any(c.isdigit() for c in value)
    has_alpha = any(c.isalpha() for c in value)
    return has_digit and has_alpha


def _on_password_value(sc: Scan, value: str, ks: int, ve: int) -> None:
    text = sc.text
    if _IDENT_PATH.match(value) or (value.startswith("/") and "/" in value[1:]):
        return
    if value.isdigit() and len(value) <= 3:
        return
    line_start = text.rfind("\n", 0, ks) + 1
    line_end = text.find("\n", ve)
    line = text[line_start : len(text) if line_end == -1 else line_end].lower()
    in_connection = "://" in line[: ks - line_start] or (
        ";" in line and _CONNECTION_KEYS.search(line) is not None
    )
    sc.add("connection_string" if in_connection else "password", ks, ve)


def on_urlcred(sc: Scan, m: Hit) -> None:
    if m.has("tok"):
        ts, te = m.span("tok")
        if not high_entropy(sc.text[ts:te]):
            return
    else:
        ps, pe = m.span("pw")
        if is_placeholder(sc.text[ps:pe]):
            return
    s, e = m.span()
    sc.add("connection_string", s, e)


JWK_RULE = r"[\"']kty[\"']\s*:\s*[\"'](?:RSA|EC|OKP|oct)[\"']"
"""A JSON Web Key; it is a private key when its object has a private parameter."""

_JWK_PRIVATE: Final = re.compile(r"[\"'](?:d|p|q|dp|dq|qi|k)[\"']\s*:\s*[\"'][A-Za-z0-9_\-]{8,}")


def on_jwk(sc: Scan, m: Hit) -> None:
    """A JWK object (the braces around ``"kty"``) with ``d``/``p``/``q``/``dp``/``dq``/
    ``qi`` (RSA, EC, OKP private parts) or ``k`` (a symmetric key) is a private key."""
    s, e = m.span()
    text = sc.text
    open_ = text.rfind("{", max(0, s - 8192), s)
    close = text.find("}", e, e + 16384)
    if open_ == -1 or close == -1 or text.rfind("}", open_, s) != -1:
        return
    if _JWK_PRIVATE.search(text, open_, close):
        sc.add("private_key", open_, close + 1)


NAMED_VALUE_RULE = (
    r"(?i)[\"']name[\"']\s*:\s*[\"'](?P<hname>[a-z0-9_\-]*(?:auth|token|key|secret|cookie|"
    r"session|passw|pwd)[a-z0-9_\-]*)[\"']\s*,\s*[\"']value[\"']\s*:\s*[\"']"
    r"(?P<hval>[^\"'\n]{4,})"
)
"""A header or parameter as a name/value pair (HAR files, Postman collections):
``{"name": "Authorization", "value": "Bearer ..."}``."""

_COOKIE_PAIR: Final = re.compile(r"([^=;\s]+)=([^;\s]+)")


def on_named_value(sc: Scan, m: Hit) -> None:
    """The value of a credential-named header or parameter, judged by its name."""
    name = sc.text[slice(*m.span("hname"))].lower()
    vs, ve = m.span("hval")
    value = sc.text[vs:ve]
    if "authorization" in name:
        scheme, _sp, rest = value.partition(" ")
        if rest:
            _on_auth_scheme(sc, scheme.lower(), vs, ve - len(rest), ve)
        elif high_entropy(value):
            sc.add("api_token", vs, ve)
    elif "cookie" in name:
        for c in _COOKIE_PAIR.finditer(value):
            if high_entropy(c.group(2)):
                sc.add("api_token", vs + c.start(), vs + c.end())
    elif any(w in name for w in ("passw", "pwd")):
        if not is_placeholder(value):
            sc.add("password", vs, ve)
    elif high_entropy(value):
        sc.add("api_token", vs, ve)


RULES: Final[list[tuple[str, str, Handler]]] = [
    ("prefixed", PREFIXED_RULE, on_prefixed),
    ("pem", PEM_RULE, on_pem),
    ("urlcred", URLCRED_RULE, on_urlcred),  # before contact's e-mail rule
    ("assign", ASSIGN_RULE, on_assign),
    ("jwk", JWK_RULE, on_jwk),
    ("namedvalue", NAMED_VALUE_RULE, on_named_value),
]
"""This family's rules as (name, RE2 pattern, handler), in the order the scanner runs them."""

__all__ = [
    "ASSIGN_RULE",
    "JWK_RULE",
    "NAMED_VALUE_RULE",
    "PEM_RULE",
    "PREFIXED_RULE",
    "RULES",
    "URLCRED_RULE",
    "high_entropy",
    "is_placeholder",
    "on_assign",
    "on_jwk",
    "on_named_value",
    "on_pem",
    "on_prefixed",
    "on_urlcred",
]
