"""Credentials written in prose: "my password is hunter2", "das Passwort lautet ...".

Categories ``password`` and ``api_token`` (restricted). A credential word in English,
German, French, Spanish or Dutch (``data/credential_words.txt``: "password", "Passwort",
"Kennwort", "mot de passe", "mdp", "contraseña", "clave de acceso", "wachtwoord",
"PIN-Code", "credentials" ...; ``data/token_words.txt`` for tokens: "api token",
"Zugangstoken", "clé API", "client secret" ...), optionally qualified ("for the VPN", "für
den Router", "du wifi", "de la wifi de la oficina", "van de server"), then a connector
("is", ":", "=", "lautet", "c'est", "es", "set to", "auf", "en", "a", "naar" ..., with
"now"/"still"/"immer noch"/"toujours"/"todavía"/"nog steeds" after it), then a value. The
short words "pass", "pw", "pwd", "pin", "clave", "token", "secret" count only before a
connector or a qualifier, or after a separator in a user/password pair ("user admin / pass
...", "login: jdoe, pw: ..."). "log in as <user> with <secret>" (and its German, French,
Spanish and Dutch forms) is a pair too.

Fail closed: a password value that looks like a secret (letters and digits, or a symbol,
or mixed case; four or more digits after a connector) is a finding; a plain word after a
connector that is not a known non-value ("incorrect", "abgelaufen", "oublié", "caducada",
``data/credential_stopwords.txt``, participles and adverbs by their endings) is an
*uncertain* finding (``certain=False``: the request stays local, redaction leaves it). A
token value must be long (16+ characters, letters and digits); a high-entropy one is
certain, another one uncertain. Placeholders stay public: ``<YOUR_PASSWORD>``,
``${DB_PASSWORD}``, ``****``, ``xxx``, ``changeme`` and the rest of
``data/placeholders.txt``; "your password" and "the password you chose" have no value.

Generalised (issue 13, after the validation part showed the connector grammar alone
overfitted its tuning phrasings): when the grammar finds no value, any secret-shaped
token among the next twelve words (80 characters; 40 for tokens) counts, in any word
order ("la contraseña que puse es X", "das neue Passwort wird X sein", "the password I
picked is X"), on the next line when the word ends its line ("Password:\\n X") or in a
chat reply to a short line that asks for it ("what's the wifi password?\\nLaura: X"),
and - uncertain - a strongly secret-shaped token up to 60 characters before a password
word. Certain when the token mixes letters and digits with a symbol or both cases,
uncertain when it only mixes letters and digits. Short words need more: "key",
"Schlüssel", "clé", "sleutel", "jeton", "llave" only before a letters-and-digits token
or a qualifier, "code" only before a connector and digits (never after "zip", "error",
"promo" ...). PINs: 4-8 digits anywhere on the PIN word's line, not a year. User/secret
pairs without a password word ("the sftp login is deploy / X", "connecte-toi avec
jdupont / X"); CSV columns headed pin/pwd/clave/mdp/Passwort/token/api_key. Not secrets:
technical words with digits (sha256, OAuth2, Windows11, 8-stellig), model and product
names (AX1500, TP-Link), dotted code names, versions, identifiers after a key word
("user_profile_cache_v2"), YAML tags ("!vault"), topic nouns after the word ("password
manager").
"""

from __future__ import annotations

import re
from typing import Final

from edge_agent.routing.sensitivity.credentials import high_entropy, is_placeholder
from edge_agent.routing.sensitivity.matching import Handler, Hit, Scan
from edge_agent.routing.sensitivity.terms import alternation, entries

_QUALIFIER_WORDS: Final = (
    r"for|of|on|at|f[üu]r|f[üu]rs|von|vom|zum|zur|beim|bei|ins|im|des|du|de|del|van|voor|pour|"
    r"para"
)

_KINDS_SOURCE: Final = (
    r"(?i)(?P<word>\b(?:" + alternation("credential_words.txt") + r")\b)"
    r"|(?P<tokw>\b(?:" + alternation("token_words.txt") + r")\b)"
    r"|(?P<weak>\b(?:pass|pw|pwd|pword|clave|contra|ww|token|secret|zugang)\b)(?:[ \t]*"
    r"(?::|=|->|\u2192|(?:is|es|ist|est|c['\u2019]est|lautet|was|war|era|wordt|"
    + _QUALIFIER_WORDS
    + r")\b)|[ \t]+-?[ \t]*[^\s0-9]*[0-9][^\s]*[A-Za-z]|[ \t]+-?[ \t]*[^\s0-9]*[A-Za-z][^\s]*[0-9])"
    r"|(?P<weak2>\b(?:key|schl[üu]ssel|sleutel|jeton|llave)\b|\bcl[eé])"
    r"(?:(?:[ \t]*(?:[:=]|->|\u2192|(?:is|es|ist|est|lautet)\b))?[ \t]*[\"'`]?"
    r"(?:[A-Za-z+/_\-]*[0-9][A-Za-z0-9+/_\-]*[A-Za-z]|[0-9+/_\-]*[A-Za-z][A-Za-z0-9+/_\-]*[0-9])"
    r"|[ \t]+(?:f[üu]r|for|de|du|del|van|voor|pour|para|of)[ \t])"
    r"|(?P<alone>\b(?:token|secret|key|schl[üu]ssel|sleutel|jeton|api[ _\-]?key)[ \t]*"
    r"(?:pls|plz|please|bitte|svp|por[ \t]+favor|\?)?[ \t]*:?\r?\n)"
    r"|(?P<weak3>\b(?:token|secret|pass|password|passwort|pw)[ \t]+[A-Za-z]+[ \t]*[:=])"
    r"|(?P<code>\bc[oó]d(?:e|igo)\b)(?:[ \t]*(?::|=|->|\u2192|\b(?:c['\u2019]est|lautet|es|ist|is|"
    r"est|era|was|war)\b)[ \t]*[A-Za-z]*[0-9]|[ \t]+(?:de|d['\u2019]|of|for|to|van|f[üu]r|du|del|"
    r"der|des|vom|wifi|wi-fi|wlan|pin|secreto|secret)\b)"
    r"|(?P<pairc>\b(?:acceso|acc[eè]s|access|zugang|toegang|login|inlog)\b)[^\n/:]*:[ \t]*"
    r"[^\s/,;:]+[ \t]*/[ \t]*[^\s/]*[0-9!#$%&*?@+]"
    r"|[/,;|&][ \t]*(?P<pair>\b(?:pass|pw|pwd|passwd)\b)"
    r"|(?P<up>\bu[ \t]*[:=][ \t]*[^\s,;/|]+[ \t,;/|]+p[ \t]*[:=]"
    r"|\b(?:user(?:name)?|login|benutzer(?:name)?|usuario|utilisateur|gebruiker(?:snaam)?)"
    r"[ \t]*[:=]?[ \t]*[^\s,;/|]+[ \t,;/|]+(?:pw|pwd|pass|passwd)\b[ \t]*[:=]?)"
    r"|(?P<pin>\b(?:pin(?:[ \-]?code)?|pincode|pin-nummer)\b)"
    r"(?:[ \t:=\-]*[0-9]|[ \t]+(?:is|es|ist|est|lautet|was|" + _QUALIFIER_WORDS + r")\b"
    r"|['\u2019]?s?[^\n0-9]*[0-9])"
    r"|(?:\n|\A|[,;\t|])[ \t]*[\"']?(?P<col>(?:pin|pin[ _\-]?code|pincode|pwd|pw|pass|passcode|"
    r"clave|mdp|"
    r"contra|ww|token|secret|api[_\-]?key|apikey|access[_\-]?token|auth[_\-]?token|"
    r"secret[_\-]?key|client[_\-]?secret|private[_\-]?key|kennwort|passwort|contrase(?:ñ|n)a|"
    r"wachtwoord|mot[_ ]de[_ ]passe))[\"']?[ \t]*[,;\t|\r\n]"
    r"|(?P<up2>\b(?:login|user(?:name)?|benutzer(?:name)?|usuario|utilisateur|identifiant|"
    r"gebruiker(?:snaam)?)\b(?:[ \t]+(?:is|es|ist|est))?[ \t]*:?"
    r"[ \t]+[^\s/,;:]+[ \t]*/[ \t]*[^\s/]*[0-9!#$%&*?@+][^\s/]*)"
    r"|(?P<loginw>\b(?:log(?:ged)?[ \t]?in|sign(?:ed)?[ \t]?in|connecte[rz]?|anmelden|"
    r"einloggen|inloggen|entra[r]?|accede[r]?|anmeldung|login|inlog|acceso|connexion|"
    r"conexi[oó]n)[ \t]+(?:with|avec|mit|con|met)\b)"
    r"|(?P<login>\b(?:log(?:ged)?[ \t]?in|sign(?:ed)?[ \t]?in|anmelden|einloggen|angemeldet|"
    r"eingeloggt|connecte[rz]?|inicia[r]?[ \t]+sesi[oó]n|inloggen|ingelogd)[ \t]+"
    r"(?:as|als|como|comme|en[ \t]+tant[ \t]+que)\b)"
)
"""The rule with its alternatives named (Python ``re`` syntax)."""

PROSE_RULE = (
    re.sub(r"\(\?P<[a-z]+>", "(?:", _KINDS_SOURCE)
    .replace("\\u2019", "\\x{2019}")
    .replace("\\u2192", "\\x{2192}")
)
"""The RE2 rule: the same pattern without capture groups, so that RE2 finds each match
with its DFA alone (groups make it run its slower NFA over every match); the handler
tells the alternatives apart with :data:`_KINDS` on the matched text."""

_KINDS: Final = re.compile(_KINDS_SOURCE)

_STOP: Final[frozenset[str]] = frozenset(w.lower() for w in entries("credential_stopwords.txt"))

_QUALIFIER: Final = (
    r"(?:[ \t]*\([^()\n]{0,40}\))?"
    r"[ \t]+(?:" + _QUALIFIER_WORDS + r"|da|della|dello|to\s+the|to\s+my)"
    r"(?:[ \t]+[^\s:=\"'`]+){1,6}?"
)
_ADVERB: Final = (
    r"(?:[ \t]+(?:now|still|currently|jetzt|immer[ \t]+noch|noch|nun|maintenant|toujours|"
    r"encore|ahora|todav[ií]a|a[uú]n|nu|nog(?:[ \t]+steeds)?|steeds))?"
)
_CONN_WORDS: Final = (
    r":=|=>|->|[:=]|(?:is|was|ist|lautet|hei(?:ß|ss)t|luidt|reads|war|est|c['\u2019]est|es|era|sera|wordt|werd|"
    r"set[ \t]+to|changed[ \t]+to|to|auf|en|por|naar|a|à|soit|devient)\b"
)
_QUALIFIED_CONN: Final = (
    r":=|=>|->|[:=]|(?:is|was|ist|lautet|hei(?:ß|ss)t|luidt|reads|war|est|c['\u2019]est|es|era|sera|wordt|werd|"
    r"set[ \t]+to|changed[ \t]+to|soit|devient)\b"
)
"""The connectors that may follow a qualifier ("to", "en", "a" would end it too early)."""
_PARTICIPLE: Final = (
    r"(?:[ \t]+(?:changed|set|updated|reset|geändert|gesetzt|changé|modifié|cambiad[oa]|"
    r"gewijzigd|veranderd|ingesteld))?"
)
_AFTER: Final = re.compile(
    r"(?:" + _QUALIFIER + r"(?=[ \t]*(?:" + _QUALIFIED_CONN + r"))|" + _PARTICIPLE + r")"
    r"[ \t]*(?:(?P<conn>" + _CONN_WORDS + r")" + _ADVERB + r")?"
    r"(?:[ \t]*:)?[ \t]*(?P<quote>[\"'`«„“\u201a])?[ \t]*"
    r"(?P<val>[^\s\"'`«»“”„\u201a]{1,200})",
    re.IGNORECASE,
)
"""What follows a credential word: a qualifier, a connector, then the value."""

_LOGIN_AFTER: Final = re.compile(
    r"[ \t]+[^\s]{1,64}[ \t]+(?:with|mit|con|avec|met|and|und|et|y|en)[ \t]+"
    r"(?:(?:the|das|dem|le|la|el|het|password|passwort|kennwort|mot[ \t]+de[ \t]+passe|"
    r"contraseña|clave|wachtwoord)[ \t]+){0,2}(?P<val>[^\s\"'`,;]{4,200})",
    re.IGNORECASE,
)
"""What follows "log in as": the user name, "with", then the secret."""

_STRONG_CONNECTORS: Final = frozenset({":", "=", ":=", "=>", "->", "lautet", "c'est", "c\u2019est"})
_WEAK_CONNECTORS: Final = frozenset({"to", "auf", "en", "por", "naar", "a", "à"})

_NON_VALUE_ENDINGS: Final = (
    "ed", "ly", "ing", "able", "ible", "ive", "ment", "ée", "é", "ado", "ada", "ido", "ida",
    "mente", "lich", "iert", "ness", "tion", "sion",
)  # fmt: skip
_FILE_ENDINGS: Final = (
    ".py", ".yaml", ".yml", ".json", ".env", ".txt", ".cfg", ".ini", ".toml", ".conf",
    ".md", ".xml", ".js", ".ts", ".sh", ".kdbx", ".csv", ".html", ".properties",
)  # fmt: skip
_CODE_PREFIXES: Final = (
    "os.", "env.", "process.", "self.", "config.", "settings.", "secrets.", "vault.",
    "args.", "opts.", "options.", "request.", "req.", "this.", "ctx.", "params.",
)  # fmt: skip
_VERSION: Final = re.compile(r"[vV]?[0-9]+(?:\.[0-9]+)+[a-z0-9\-]*\Z")
_USER_WORDS: Final = re.compile(
    r"(?i)\b(?:user(?:name)?|login|benutzer(?:name)?|nutzer|utilisateur|identifiant|usuario|"
    r"gebruiker(?:snaam)?|account|konto|compte|cuenta|admin|root)\b|@"
)


def _value_kind(value: str) -> str:
    """``"secret"`` (letters and digits, a symbol, or mixed case), ``"digits"``,
    ``"word"`` (letters only) or ``"other"``."""
    has_digit = any(c.isdigit() for c in value)
    has_alpha = any(c.isalpha() for c in value)
    has_symbol = any(not c.isalnum() for c in value)
    if has_alpha and (has_digit or has_symbol):
        return "secret"
    if has_digit and not has_alpha:
        return "digits" if value.isdigit() else "other"
    if has_alpha and not value.islower() and not value.isupper() and not value.istitle():
        return "secret"  # "hUnTeR", "SommerWind": mixed case inside the word
    return "word" if has_alpha else "other"


def _not_a_value(value: str) -> bool:
    """Words and shapes that follow a credential word without being a secret."""
    low = value.lower()
    if value.isdigit():  # a PIN or code: only "0000"-like runs are stand-ins ("9911" is none)
        return len(set(value)) == 1
    if low in _STOP or is_placeholder(value):
        return True
    if value[:1] in "[<{":
        return True  # a bracketed stand-in cut at its space: "[your password]", "<insert token>"
    if value[:1] == "!" and value[1:].replace(":", "").isalpha():
        return True  # a YAML tag: "password: !vault |", "!Ref DbPassword"
    if low.startswith(("http://", "https://", "www.", "/", "./", "~/")):
        return True
    if low.endswith(_FILE_ENDINGS) or low.startswith(_CODE_PREFIXES) or "(" in low:
        return True
    if _VERSION.match(value):
        return True
    if value.isalpha() and value.islower():
        if low.endswith(_NON_VALUE_ENDINGS):
            return True
        if low.startswith("ge") and low.endswith(("t", "d", "n")) and len(low) > 6:
            return True  # German/Dutch participles: gespeichert, gewijzigd, geschützt
    return False


def judge(
    value: str, conn: str | None, quoted: bool, pin: bool = False, weak: bool = False
) -> bool | None:
    """Is ``value`` (after a password word, with this connector) a secret? True: a
    finding; False: an uncertain finding (fail closed); None: not a value. After a weak
    word ("pass", "clave") a plain word counts only after ":" or "=" or in quotes."""
    if len(value) < 4 or _not_a_value(value):
        return None
    kind = _value_kind(value)
    c = (conn or "").lower()
    if kind == "other" and sum(c.isdigit() for c in value) >= 4:
        kind = "digits"  # "1234-5678": a recovery code, a door code with a separator
    if pin:
        if kind == "digits" and len(value) <= 12:
            return True
        if kind == "secret" and conn and not re.search(r"[a-z]{4}", value):
            return True  # not "2024-ready", "v2-final": words with digits
        return None
    if kind == "secret":
        return bool(conn or quoted)
    if kind == "digits":
        return True if conn and c not in _WEAK_CONNECTORS else None
    if kind == "word" and conn and c not in _WEAK_CONNECTORS:
        strong = quoted or c in _STRONG_CONNECTORS
        return False if (strong or (len(value) >= 6 and not weak)) else None
    if kind == "word" and quoted:
        return False
    return None


def judge_token(value: str) -> bool | None:
    """Is ``value`` (after a token word) a token? True: high entropy; False: long,
    letters and digits (uncertain); None: not a token."""
    if len(value) < 16 or _not_a_value(value):
        return None
    if high_entropy(value):
        return True
    has_digit = any(c.isdigit() for c in value)
    has_alpha = any(c.isalpha() for c in value)
    return False if has_digit and has_alpha and " " not in value else None


def _clean(value: str) -> str:
    """The value without the sentence punctuation that follows it (a closing bracket
    stays when its opening one is in the value: ``<password>``, ``${DB_PASS}``)."""
    value = value.rstrip(".,;:?") or value
    while value and value[-1] in ")]}>" and "([{<"[")]}>".index(value[-1])] not in value:
        value = value[:-1].rstrip(".,;:?")
    return value or "?"


def _find_after(sc: Scan, word_start: int, word_end: int, kind: str, pin: bool) -> None:
    """The value after a credential word: by the connector grammar first, then (fail
    closed) any secret-shaped token near the word (:func:`_secret_nearby`)."""
    before = len(sc.findings)
    _find_after_grammar(sc, word_start, word_end, kind, pin)
    if len(sc.findings) == before:
        text = sc.text
        if text[word_start - 1 : word_start] in (".", "_", "$") or (
            text[word_end : word_end + 1] in (".", "(", "[", "@", "_")
        ):
            return  # "self.password", "password.encode(": code, not prose
        if _TOPIC_AFTER.match(text, word_end):
            return  # "my password manager is 1Password8": a topic, not a value
        _secret_nearby(sc, word_start, word_end, kind == "token", pin)


def _find_after_grammar(sc: Scan, word_start: int, word_end: int, kind: str, pin: bool) -> None:
    text = sc.text
    m = _AFTER.match(text, word_end, min(len(text), word_end + 200))
    if m is None:
        return
    vs = m.start("val")
    value = _clean(m.group("val"))
    conn = m.group("conn")
    glued = vs == word_end and text[word_end - 1 : word_end] not in (":", "=", " ", "\t")
    if glued or text[word_start - 1 : word_start] in (".", "_", "$"):
        return  # "password.encode(", "password@host", "self.password": code, not prose
    if kind == "token":
        verdict = judge_token(value)
        if verdict is not None:
            sc.add("api_token", word_start, vs + len(value), certain=verdict)
        return
    if _value_kind(value) == "word" and _user_pass_value(sc, word_start, vs + len(value)):
        return  # "credentials: admin / S3cret!": the secret after the user name
    if verdict_is_creds(text[word_start:word_end]) and _secret_on_line(sc, word_start, word_end):
        return  # "here are the creds - login jdoe / Winter2024!"
    verdict = judge(value, conn, m.group("quote") is not None, pin, kind == "weak")
    if verdict is False and kind == "pair" and _value_kind(value) == "secret":
        verdict = True  # "user admin / pass s3cret!": a user/password pair
    if verdict is not None:
        sc.add("password", word_start, vs + len(value), certain=verdict)


_CREDS_WORDS: Final = re.compile(
    r"(?i)cred(?:ential)?s|login\s+details|zugangsdaten|credenciales|inloggegevens|identifiants?|"
    r"inlog|anmeldedaten|logindaten|benutzerdaten|datos\s+de\s+acceso"
)


def verdict_is_creds(word: str) -> bool:
    """A word for a set of credentials ("creds", "Zugangsdaten"), not for one secret."""
    return _CREDS_WORDS.fullmatch(word.strip()) is not None


def _secret_on_line(sc: Scan, word_start: int, word_end: int) -> bool:
    """After a credentials word, a secret-shaped token later on its line (at most 100
    characters on), after a user/password separator ("/", ":") or with a symbol in it."""
    text = sc.text
    eol = text.find("\n", word_end, word_end + 100)
    hi = word_end + 100 if eol == -1 else eol
    for t in re.finditer(r"[^\s,;\"'`]{6,100}", text[word_end:hi]):
        value = _clean(t.group())
        if "@" in value or "://" in value or _not_a_value(value):
            continue
        if _value_kind(value) != "secret" or not any(c.isdigit() for c in value):
            continue
        start = word_end + t.start()
        before = text[max(word_end, start - 3) : start]
        pair = "/" in before or ":" in before
        if pair or not value.replace(".", "").isalnum():  # "OAuth2" alone is no secret
            sc.add("password", word_start, start + len(value), certain=pair)
            return True
    return False


_PAIR_TAIL: Final = re.compile(r"[ \t]*[/:|][ \t]*([^\s\"'`,;]{4,100})")


def _user_pass_value(sc: Scan, word_start: int, user_end: int) -> bool:
    """ "credentials admin / S3cret!": a user name, a separator, then the secret (found)."""
    m = _PAIR_TAIL.match(sc.text, user_end, min(len(sc.text), user_end + 120))
    if m is None:
        return False
    secret = _clean(m.group(1))
    if _not_a_value(secret) or _value_kind(secret) != "secret":
        return False
    sc.add("password", word_start, m.start(1) + len(secret))
    return True


_VALUE_BEFORE: Final = re.compile(
    r"(?i)(?:^|(?<=\s))[\"'`]?(?P<val>[^\s\"'`]{4,100})[\"'`]?[ \t]+(?:as|als|comme|como)[ \t]+"
    r"(?:(?:the|my|your|new|das|dem|den|mein\w*|neue\w*|le|la|mon|nouveau|el|mi|nueva|het|mijn|"
    r"nieuwe)[ \t]+)*\Z"
)
"""A value before "as (the) password" ("use Sommer2024! as the password", "nimm X als
Passwort", "utilise X comme mot de passe", "usa X como contraseña", "gebruik X als
wachtwoord")."""


_TOPIC_AFTER: Final = re.compile(
    r"(?i)[ \t]*-?(?:managers?|fields?|polic(?:y|ies)|reset|hash(?:es|ing)?|generators?|strength|"
    r"length|rules?|requirements?|prompts?|dialog|input|box|forms?|pages?|screens?|files?|vault|"
    r"store|protection|recovery|expiry|rotation|safe|tresor|verwaltung|gestionnaire|"
    r"gestor|beheerder|kluis)\b"
)
"""A topic noun right after the credential word: "1Password as password manager"."""


def _value_before(sc: Scan, word_start: int, word_end: int, token: bool) -> None:
    if _TOPIC_AFTER.match(sc.text, word_end):
        return
    m = _VALUE_BEFORE.search(sc.text, max(0, word_start - 160), word_start)
    if m is None:
        return
    value = _clean(m.group("val"))
    verdict = judge_token(value) if token else judge(value, "as", quoted=False)
    if verdict is not None:
        vs = m.start("val")
        sc.add("api_token" if token else "password", vs, word_end, certain=verdict)


def _on_login(sc: Scan, start: int, end: int) -> None:
    """ "log in as jdoe with Tr0ub4dor&3": the secret after the user name."""
    m = _LOGIN_AFTER.match(sc.text, end, min(len(sc.text), end + 300))
    if m is None:
        return
    value = _clean(m.group("val"))
    if not _not_a_value(value) and _value_kind(value) == "secret":
        sc.add("password", start, m.start("val") + len(value))


_SLASH_PAIR: Final = re.compile(
    r"(?:[ \t]+(?:is|es|ist|est))?[ \t]*:?[ \t]*(?P<user>[^\s/,;:]+)[ \t]*"
    r"(?:/|,|\band\b|\bet\b|\bund\b|\by\b|\ben\b)[ \t]*"
    r"(?:(?:the|le|la|el|das|dem|het|mot[ \t]+de[ \t]+passe|password|passwort|kennwort|"
    r"contraseña|clave|wachtwoord|pass|pw|mdp)[ \t]+){0,2}(?P<val>[^\s\"'`,;]{4,100})",
    re.IGNORECASE,
)
"""A user name, a separator ("/", "and", "et", "und", "y", "en"), then the secret."""


def _on_slash_pair(sc: Scan, start: int, after: int) -> None:
    """A user name and a secret without a password word: the secret must look like one."""
    text = sc.text
    word = re.match(r"\S+", text[after:]) if after == start else None
    pos = after + (word.end() if word else 0)
    m = _SLASH_PAIR.match(text, pos, min(len(text), pos + 200))
    if m is None or ("@" in m.group("val") and "." in m.group("val")):
        return
    value = _clean(m.group("val"))
    verdict = _secret_shape(value, False, False)
    if verdict is not None:
        sc.add("password", start, m.start("val") + len(value), certain=verdict)


def _secret_before(sc: Scan, word_start: int, word_end: int) -> None:
    """Fail closed: a strongly secret-shaped token (letters, digits and a symbol or mixed
    case) earlier on the line, at most 60 characters before the credential word ("Use
    Maple2020! to log in, that's the admin password"): an uncertain finding."""
    text = sc.text
    lo = max(text.rfind("\n", 0, word_start) + 1, word_start - 60)
    eol = text.find("\n", word_end)
    if any(c in text[lo : len(text) if eol == -1 else eol] for c in "(){};=[]"):
        return  # code, not prose
    for t in _NEAR_TOKEN.finditer(text, lo, word_start):
        if t.start() == lo and lo and not text[lo - 1].isspace():
            continue  # a token cut by the window
        if t.group().isalpha() or not any(c.isdigit() for c in t.group()):
            continue  # a word: only tokens with digits count before the word
        value = _clean(t.group().strip(":=-"))
        if _secret_shape(value, False, False) is True and any(c.isdigit() for c in value):
            sc.add("password", t.start(), word_end, certain=False)
            return


_DELIMITERS: Final = ",;\t|"

_PASSWORD_COLUMNS: Final = frozenset(
    {"pin", "pincode", "pin code", "pin-code", "pin_code", "pwd", "pw", "pass", "passcode",
     "clave", "mdp", "contra", "ww",
     "kennwort", "passwort", "contraseña", "contrasena", "wachtwoord", "mot de passe",
     "mot_de_passe"}
)  # fmt: skip
"""Header cells of a password column (the other credential columns hold tokens)."""

_TOKEN_WEAK: Final = frozenset(
    {"token", "secret", "key", "schlüssel", "schlussel", "clé", "cle", "sleutel", "jeton",
     "llave", "api key", "api-key", "api_key", "apikey"}
)  # fmt: skip
"""Short words after which only a long token is a secret (not a short value)."""

_OTHER_CODE: Final = re.compile(
    r"(?i)\b(?:zip|postal|post|area|country|error|status|exit|return|source|qr|bar|promo|"
    r"discount|coupon|voucher|gift|referral|invite|invitation|product|hs|iso|icd|swift|bic|"
    r"sort|colou?r|tracking|fehler|rabatt|gutschein|postleit|erreur|promotion|r[ée]duction|"
    r"postal|c[oó]digo\s+postal|descuento|cup[oó]n|kortings|postcode|status|http|ean|"
    r"article|art\.?|lab|code)[ \t\-_]*\Z"
)
"""Words before "code" that make it another kind of code."""


def _csv_column(sc: Scan, s: int, e: int, token: bool) -> bool:
    """A header cell of a delimited table ("user,password"): judge the values of its
    column in the rows below (at most 50); True when ``text[s:e]`` is such a cell."""
    text = sc.text
    line_start = text.rfind("\n", 0, s) + 1
    line_end = text.find("\n", e)
    if line_end == -1:
        return False
    header = text[line_start:line_end]
    delims = [d for d in _DELIMITERS if d in header]
    if len(delims) != 1:
        return False
    d = delims[0]
    cells = header.split(d)
    before = text[line_start:s].rstrip(" \"'")
    after = text[e:line_end].lstrip(" \"'")
    if (before and not before.endswith(d)) or (after and not after.startswith(d)):
        return False
    column = before.count(d)
    above_end = line_start - 1
    above = text[text.rfind("\n", 0, max(0, above_end)) + 1 : max(0, above_end)]
    if line_start and above.count(d) == header.count(d):
        return False  # a row of the table, not its header
    pos = line_end + 1
    for _ in range(50):
        end = text.find("\n", pos)
        row = text[pos : len(text) if end == -1 else end]
        values = row.split(d)
        if len(values) == len(cells):
            offset = pos + sum(len(v) + 1 for v in values[:column])
            raw = values[column]
            value = raw.strip(" \"'")
            verdict = judge_token(value) if token else judge(value, ":", quoted=False)
            if verdict is False and _value_kind(value) == "word":
                verdict = None  # a plain word in a cell ("string", "admin"): no finding
            if verdict is not None:
                vs = offset + raw.index(value) if value else offset
                sc.add("api_token" if token else "password", vs, vs + len(value), certain=verdict)
        if end == -1:
            break
        pos = end + 1
    return True


def on_prose(sc: Scan, m: Hit) -> None:
    """A credential word in prose: judge the value that follows it."""
    k = _KINDS.match(sc.text, m.span()[0])
    kind = k.lastgroup if k is not None else None
    if k is None or kind is None:
        return
    s, e = k.span(kind)
    if kind == "login":
        _on_login(sc, s, e)
        return
    if kind == "pairc":  # "Acceso a la intranet: mgarcia / Intranet2024!"
        colon = sc.text.find(":", e)
        if colon != -1:
            _on_slash_pair(sc, s, colon + 1)
        return
    if kind in ("up2", "loginw"):  # "login is deploy / Xy7!pQ2m", "connecte avec jdupont / X"
        _on_slash_pair(sc, s, e if kind == "loginw" else s)
        return
    if kind == "pair" and _USER_WORDS.search(sc.text[max(0, s - 60) : s]) is None:
        return  # "pass/fail": no user name before the separator
    if kind == "up":  # "u: jdoe p: ...", "login jdoe pass ...": the pair is in the match
        kind = "pair"
    if kind == "alone":  # the word alone on its line: "secret\n<token>"
        alone = _ALONE_WORD.match(sc.text, s, e)
        e = alone.end() if alone is not None else e
    word = sc.text[s:e].lower()
    if kind == "weak3":  # "secret value: ...", "Passwort neu: ...": a word between
        word = word.split()[0]
    if kind in ("weak2", "code", "alone", "weak3"):
        kind = "weak"
    if (
        kind == "weak"
        and word.startswith(("code", "cód", "cod"))
        and _OTHER_CODE.search(sc.text, max(0, s - 24), s)
    ):
        return  # "zip code 94105", "error code 4031", "promo code SUMMER24": no secret
    token = kind == "tokw" or (kind == "weak" and word in _TOKEN_WEAK)
    if kind == "col":
        _csv_column(sc, s, e, word not in _PASSWORD_COLUMNS)
        return
    if kind in ("word", "tokw") and _csv_column(sc, s, e, token):
        return
    if kind in ("word", "tokw"):
        _value_before(sc, s, e, token)
    if token and kind == "weak":  # "token ...", "key: ...": a long token near the word
        if sc.text[s - 1 : s] not in (".", "_", "$", "-"):
            _secret_nearby(sc, s, e, True, False)
        return
    if token:
        _find_after(sc, s, e, "token", False)
        return
    pin = kind == "pin" or any(
        w in word for w in ("pin", "code", "código", "codigo", "geheimzahl", "cijfercode")
    )
    before = len(sc.findings)
    _find_after(sc, s, e, kind, pin)
    if kind == "word" and len(sc.findings) == before:
        _secret_before(sc, s, e)


_TECH: Final = re.compile(
    r"(?i)(?:sha|md|aes|rsa|ecdsa|ed|argon|pbkdf|scrypt|bcrypt|utf|base|oauth|wpa|wep|ipv|tls|"
    r"ssl|http|https|smtp|imap|pop|ftp|x|iso|rfc|cve|win|windows|python|java|node|ubuntu|"
    r"debian|centos|rhel|macos|ios|android|gpt|llama|mp|h|v|ver|version|step|level|fido|u2f|"
    r"hotp|totp|ntlm|krb|kerberos|kdf|crc|blake|des|rc|iphone|galaxy|pixel|office|excel|"
    r"keepass|keepassxc|bitwarden|lastpass|chrome|firefox|edge|safari|w|cp|iso|en|de|es|fr|"
    r"nl|latin|cp|covid|sars|e|i|k|a|b|c|l)[\-_ .]?[0-9][0-9a-z.\-]*\Z"
    r"|[0-9]+(?:fa|st|nd|rd|th|x|px|pt|ms|s|kb|mb|gb|tb|k|m|h|min|bit|bits|[\-_ ]?bit|"
    r"[\-_ ]?chars?|[\-_ ]?digits?|[\-_ ]?stellig\w*|[\-_ ]?caract\w*|[\-_ ]?car[aá]ct\w*|"
    r"[\-_ ]?tekens?|[\-_ ]?zeichen|am|pm|h[0-9]+)\Z"
    r"|(?:1password|e2e|i18n|l10n|k8s|a11y|p2p|b2b|b2c|2fa|mfa|3ds|4g|5g|wi-?fi6?)\Z"
)
"""Technical words with digits that follow a credential word without being a secret:
``sha256``, ``argon2id``, ``utf-8``, ``OAuth2``, ``Windows11``, ``8-stellig``, ``2FA``."""

_IDENTIFIER: Final = re.compile(r"[a-z]+(?:[_.\-][a-z0-9]+)+|[A-Z]+(?:_[A-Z0-9]+)+")
"""snake_case, kebab-case, dotted.names and CONSTANT_NAMES: identifiers, not tokens."""

_PRODUCT: Final = re.compile(
    r"[A-Z]{1,5}-?[0-9]{2,6}[A-Z]{0,2}|[0-9]+[A-Za-z]*-[a-z]+(?:-[a-z]+)*|[0-9]+[A-Za-z]+-[A-Za-z]+|[A-Za-z]+(?:-[A-Z][A-Za-z]*)+"
    r"|[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)+"
)
"""Model numbers, product and code names near a credential word: "AX1500", "2FA-App",
"2024-ready", "64-bit",
"TP-Link", "hashlib.sha256"."""

_NEAR_TOKEN: Final = re.compile(r"[^\s,;\"'`«»“”„()]+")
_SENTENCE_WORDS: Final = 12
"""At most this many words after the credential word are read for a secret."""


def _secret_shape(value: str, pin: bool, token: bool) -> bool | None:
    """Is ``value`` (near a credential word, no connector needed) a secret? True: a
    finding; False: an uncertain finding; None: not one."""
    if len(value) < 4 or "@" in value or "://" in value or _not_a_value(value):
        return None
    if (len(value) <= 12 and _TECH.match(value)) or _VERSION.match(value) or value.count(".") >= 2:
        return None
    if token:
        if _IDENTIFIER.fullmatch(value):
            return None  # "user_profile_cache_v2": a name, not a token
        return judge_token(value)
    digits = sum(c.isdigit() for c in value)
    if pin and 4 <= len(value) <= 8 and value.isalnum() and not value.isdigit() and digits >= 2:
        return True  # an access code with letters: "4B27A"
    if value.isdigit():
        if pin and 4 <= len(value) <= 8 and not (len(value) == 4 and value[:2] in ("19", "20")):
            return True
        return None
    kind = _value_kind(value)
    if kind != "secret" or len(value) < 6 or _PRODUCT.fullmatch(value):
        return None
    if digits == 0 and value.replace("-", "").replace("'", "").isalpha():
        return None  # "e-mail", "Wi-Fi", "aujourd'hui": a word with a hyphen
    has_sym = any(not c.isalnum() for c in value)
    mixed = any(c.isupper() for c in value) and any(c.islower() for c in value)
    if len(value) >= 16 and high_entropy(value):
        return True
    if not digits:  # "Kiwi!Fruit" (uncertain); "DB_PASSWORD", "e-mail": identifiers
        return False if mixed and any(c not in "_-.'" for c in value if not c.isalnum()) else None
    return has_sym or mixed


def _secret_nearby(sc: Scan, word_start: int, word_end: int, token: bool, pin: bool) -> None:
    """Fail closed: a secret-shaped token among the next words after a credential word
    (on its line; on the next line when the word ends its line: "Password:\\n..."), in
    any grammar ("la contraseña que puse es X", "das neue Passwort wird X sein", "the
    password I picked is X", "usa la clave X para entrar"). Certain when the token mixes
    letters, digits and symbols or cases; uncertain when it only mixes letters and digits."""
    text = sc.text
    limit = 40 if token else 80  # where the secret may start; it is read whole (200)
    eol = text.find("\n", word_end, word_end + limit + 200)
    if eol != -1 and not text[word_end:eol].strip(" \t:=-\u2013\u2192>\r"):
        start = eol + 1
        nxt = text.find("\n", start, start + limit + 200)
        hi = start + limit + 200 if nxt == -1 else nxt
    else:
        start = word_end
        hi = word_end + limit + 200 if eol == -1 else eol
    hi = min(hi, len(text))
    for n, t in enumerate(_NEAR_TOKEN.finditer(text, start, hi)):
        if n >= _SENTENCE_WORDS or t.start() - start > limit:
            return
        if t.end() == hi and hi < len(text) and not text[hi].isspace():
            return  # cut by the window
        g = t.group()
        if g.isalpha() and (g.islower() or g.istitle() or len(g) < 6):
            continue  # an ordinary word (the common case): no secret, no need to judge it
        lead = len(t.group()) - len(t.group().lstrip(":=-\u2013\u2192>"))
        value = _clean(t.group()[lead:])
        verdict = _secret_shape(value, pin, token)
        if verdict is not None:
            category = "api_token" if token else "password"
            sc.add(category, word_start, t.start() + lead + len(value), certain=verdict)
            return
    if (
        start == word_end
        and eol != -1
        and eol - word_end <= 40
        and _ASKS.search(text, word_end, eol)
    ):
        _secret_next_line(sc, word_start, eol + 1, token)


_ALONE_WORD: Final = re.compile(r"[^\s:?]+(?:[ _\-]key)?")
"""The credential word of a line that holds little else ("token pls", "api key?")."""

_ASKS: Final = re.compile(r"(?i)\?|\b(?:pls|plz|please|bitte|svp|por[ \t]+favor)\b|:[ \t\r]*\Z")
"""A line that asks for the credential ("what's the wifi password?", "token pls")."""

_REPLY_TOKEN: Final = re.compile(r"[A-Za-z0-9+/_\-=.!#$%&*?@]{6,200}")


def _secret_next_line(sc: Scan, word_start: int, line_start: int, token: bool) -> None:
    """A short line that asks for or announces a credential ("[10:02] dev: token pls",
    "what's the wifi password?") and, on the next line (a chat reply), a token: a
    high-entropy one after a token word, a certainly secret-shaped one after a password
    word (the chat's speaker and time stamp are skipped, being no secret)."""
    text = sc.text
    nxt = text.find("\n", line_start, line_start + 240)
    hi = min(len(text), line_start + 240 if nxt == -1 else nxt)
    for t in _REPLY_TOKEN.finditer(text, line_start, hi):
        g = t.group()
        if g.isalpha() and (g.islower() or g.istitle()):
            continue
        value = _clean(g)
        if token:
            verdict = high_entropy(value) or None
        else:
            verdict = _secret_shape(value, False, False) or None
        if verdict:
            category = "api_token" if token else "password"
            sc.add(category, word_start, t.start() + len(value), certain=False)
            return


RULES: Final[list[tuple[str, str, Handler]]] = [("prose", PROSE_RULE, on_prose)]
"""This family's rules as (name, RE2 pattern, handler)."""

__all__ = ["PROSE_RULE", "RULES", "judge", "judge_token", "on_prose"]
