"""Credentials in prose, connection URLs, .env lines, auth headers, key shapes, JWKs (issue 13)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_agent.routing.sensitivity import Level, SensitivityDetector
from edge_agent.routing.sensitivity.prose_credentials import judge, judge_token

_DETECTOR = SensitivityDetector()


def _found(text: str) -> dict[str, str]:
    """Category -> matched text of each finding (the last one per category)."""
    return {f.category: text[f.start : f.end] for f in _DETECTOR.classify(text).findings}


@pytest.mark.parametrize(
    "text",
    [
        "my password is hunter2",
        "das Passwort lautet Sommer2024!",
        "Das Passwort für den Router lautet Sommer2024!",
        "le mot de passe c'est azerty123",
        "le mot de passe du wifi c'est azerty123",
        "Mon mot de passe pour la banque en ligne est A6ANxJ1PL5U.&A%+, comment le changer ?",
        "la contraseña es Madrid#2024",
        "La contraseña de la wifi de la oficina es Naranja_Azul_2025.",
        "het wachtwoord van de server is Tulp2024",
        "Kennwort: Fruehling99",
        "mdp : soleil2024",
        "user admin / pass Xy7!kk",
        "here are the creds - login jdoe / Winter2024!",
        "creds: jdoe:Winter2024!",
        "u: jdoe p: Winter2024!",
        "login jdoe pass Winter2024!",
        "login: jdoe, pw: Gh8#kLm2",
        "ops: pw for the staging box is now k9#Vt2mQ-pL, old one is revoked",
        "kollege: das pwd für den Router ist immer noch Fruehling2024!, änder das mal",
        "usuario: te paso la clave del servidor: tundra.marble.cobalt95",
        "Remind me later: my passphrase for the backup drive is fiets.walrus.falcon72",
        "I changed my password to Blue!Sky42 yesterday",
        "ich habe das Passwort auf Kaffee#77 geändert",
        "cambié la contraseña a Perro2023 ayer",
        "credentials: admin / S3cret!pw",
        "Zugangsdaten: admin / Geheim123",
        "Der Zugang: Benutzer marie_leh und Passwort Kaffee.falcon.meteor87, bitte weitergeben.",
        "Hi Emily,\nyou can log in as oliver_cal with Molen1310# until IT resets it.",
        "Das Kennwort heißt Sommer2024",
        "het wachtwoord luidt Fiets!99",
        "use Sommer2024! as the password for the VPN",
        "nimm Kaffee#77 als Passwort",
        "utilise azerty123 comme mot de passe",
        "usa Perro2023 como contraseña",
        "gebruik Tulp2024 als wachtwoord",
        "WLAN-Schlüssel: Haus2024Garten",
        "clé wifi : Maison2024!",
        "the door code is 4711",
        "Der Türcode lautet 2580#",
        "el código de la puerta es 1234",
        "de deurcode is 9911",
        "backup codes: 1234-5678 8765-4321",
        "PIN-Code 4711",
        "code PIN 8362",
        "my PIN is 2580",
        "die PIN für mein Handy ist 463343, wie ändere ich sie?",
        "el PIN de la tarjeta nueva es 7306, no se lo digas a nadie",
        "SMTP_USER=mailer\nSMTP_PASS=Qz8!vLr2pX\nSMTP_HOST=smtp.example.org",
    ],
)
def test_passwords_in_prose_are_found(text: str) -> None:
    """Passwords and PINs written in prose in five languages are restricted."""
    verdict = _DETECTOR.classify(text)
    assert verdict.level is Level.RESTRICTED, text
    assert "password" in verdict.categories, text


@pytest.mark.parametrize(
    "text",
    [
        "The password is incorrect, try again.",
        "Enter your password",
        "the password you chose",
        "password: <YOUR_PASSWORD>",
        "password=${DB_PASSWORD}",
        "password: ****",
        "password: changeme",
        "the password is xxx",
        "mot de passe oublié",
        "Passwort vergessen? Klicke hier.",
        "la contraseña es incorrecta",
        "het wachtwoord is verlopen",
        "The password must be at least 12 characters long.",
        "Reset the password to something secure.",
        "password manager 1Password v8.10",
        "tests pass / fail 10",
        "the pass is valid until 2025",
        "la clave es entender el problema",
        "PIN 13 on the GPIO header",
        "PIN 0000",
        "credentials flow in OAuth2 explained",
        "user guide pass rate 95%",
        "login page returns 500 after the update",
        "the wifi key is on the router sticker",
        "door code policy for visitors",
        "password hashing with bcrypt cost 12",
        "The password is stored in config.yaml",
        "def verify(password: str) -> bool:\n    return bcrypt.checkpw(password.encode(), h)",
        "if not password:\n    raise SystemExit(1)",
        "Wie setze ich mein Passwort zurück?",
        "¿Cómo cambio mi contraseña?",
        "the token count is 512 and max tokens is 4096",
        "use 1Password as password manager",
        "Treat this as the password field",
    ],
)
def test_credential_words_without_a_secret_are_public(text: str) -> None:
    """Credential words followed by a non-value, a placeholder or code stay public."""
    assert _DETECTOR.classify(text).findings == (), _found(text)


def test_password_and_token_columns_of_a_table_are_found() -> None:
    """The values under a password or API-key header cell are found; plain-word cells,
    placeholders and a "password" cell in a data row are not."""
    text = "user,password\nanna,Lente2024!\nbob,Zomer#77\ncarl,changeme\ndora,admin"
    assert [text[f.start : f.end] for f in _DETECTOR.classify(text).findings] == [
        "Lente2024!",
        "Zomer#77",
    ]
    keys = "id;api_key\n1;9c2f1e7a4b8d3c6f0e5a2b7d9c1f4e8a"
    assert "api_token" in _DETECTOR.classify(keys).categories
    schema = "a,b\nfield,type\npassword,string\nuser,x9"
    assert _DETECTOR.classify(schema).findings == ()


@pytest.mark.parametrize(
    "text",
    [
        "Cookie: sessionid=8f9a3c2d1e4b5a6f7c8d9e0f1a2b3c4d; theme=dark",
        "Set-Cookie: JSESSIONID=A1B2C3D4E5F6A7B8C9D0E1F2A3B4C5D6; Path=/",
    ],
)
def test_session_cookies_are_tokens(text: str) -> None:
    """A high-entropy session cookie is a credential."""
    assert "api_token" in _DETECTOR.classify(text).categories


@pytest.mark.parametrize(
    "text",
    [
        '{"name":"Authorization","value":"Bearer 8f3Kq2Lw5Pm9Rt3Vb7Nc1Df4Gh6Jk8Mn0Qs2"}',
        '{"name":"Cookie","value":"theme=dark; session=Zk9xQ2mP7vL3nR8tY1wB4cD6fH0j"}',
        '{"headers":[{"name":"X-Api-Key","value":"4d7a1c9e8b2f6035a9c1e7d4b8f20a63"}]}',
        '{"params":[{"name":"password","value":"Winter!2024"}]}',
    ],
)
def test_har_name_value_pairs_are_found(text: str) -> None:
    """Credentials in HAR/Postman name/value pairs are found by the pair's name."""
    assert _DETECTOR.classify(text).level is Level.RESTRICTED, _found(text)


@pytest.mark.parametrize(
    "text",
    [
        '{"name":"Accept","value":"application/json"}',
        '{"name":"Cookie","value":"theme=dark; lang=en"}',
        '{"name":"Authorization","value":"Bearer <token>"}',
    ],
)
def test_har_pairs_without_a_secret_are_public(text: str) -> None:
    """Ordinary headers, plain cookies and placeholder tokens in HAR pairs stay public."""
    assert _DETECTOR.classify(text).findings == (), _found(text)


def test_plain_word_after_a_connector_is_an_uncertain_password() -> None:
    """A plain word after "password is" is kept local but marked uncertain (fail closed)."""
    findings = _DETECTOR.classify("my password is sunshine").findings
    assert [(f.category, f.certain) for f in findings] == [("password", False)]


@pytest.mark.parametrize(
    ("text", "category"),
    [
        ("here's the api token M5ajXSrp0xBtysbuJkLwIedBu38bv8UcB1u6vlLZ - why 401?", "api_token"),
        ("Unser Zugangstoken lautet 35b6a168559fb738d6543fb094fd508361c86f94981ae24b", "api_token"),
        ("The secret for the webhook is 7fK2pQ9xLm4RtV8wZ3bN6cY1dH5gJ0sA", "api_token"),
        ("la clé API est 9c2f1e7a4b8d3c6f0e5a2b7d9c1f4e8a", "api_token"),
        ("POST /graphql\nx-api-key: 4d7a1c9e8b2f6035a9c1e7d4b8f20a63\n", "api_token"),
        ("amqp://svc:Zq8-Rt2-Vx6@rabbit.acme.io:5672/", "connection_string"),
        ("redis://:PBqaJy8a5DJyVMHVhQRfFVOF@cache.bigco.io:6379/0", "connection_string"),
        ("postgresql://charlotte.w:qu@rtz$01yX@db.acme.com:5432/orders", "connection_string"),
        ("mongodb+srv://app:Sx81kLm2Qp@cluster0.ab1cd.mongodb.net/db", "connection_string"),
        ("smb://CORP;jdoe:Winter2024!@files.corp.acme.de/share", "connection_string"),
        ("mqtts://edge:p4ss-Word9@broker.acme.io:8883", "connection_string"),
        (
            '{"kty":"EC","crv":"P-256","x":"fJHtrO5FSuVC","y":"YsSdH3gn","d":"06IzR_dMJED3lrrS"}',
            "private_key",
        ),
        (
            '{"d": "Vb_j6MLfsye63gmf", "e": "AQAB", "kty": "RSA", "n": "71P8nfdzmf3LHb4"}',
            "private_key",
        ),
        ('{"kty": "oct", "k": "GawgguFyGrWKav7AX4VKUg"}', "private_key"),
        (
            'Authorization: Digest username="cam", realm="x", nonce="n", uri="/",'
            ' response="6629fae49393a05397450978507c4ef1"',
            "api_token",
        ),
    ],
)
def test_tokens_urls_and_keys_are_found(text: str, category: str) -> None:
    """Tokens after token words, connection URLs of any scheme and private JWKs."""
    assert category in _DETECTOR.classify(text).categories, _found(text)


@pytest.mark.parametrize(
    "text",
    [
        '{"kty":"RSA","e":"AQAB","n":"71P8nfdzmf3LHb4tUug_W2q8wK6MNu0CP8gzyf23Tb1Q","kid":"a"}',
        '{"keys":[{"kty":"EC","crv":"P-256","x":"fJHtrO5FSuVCtmTF","y":"YsSdH3gn583W9NGq"}]}',
        "redis://localhost:6379/0",
        "amqp://guest:guest@localhost:5672/",
        "Get an API key from the dashboard and set it as OPENAI_API_KEY.",
        "The access token expires after 3600 seconds.",
    ],
)
def test_public_keys_and_placeholder_urls_are_public(text: str) -> None:
    """Public JWKs, URLs without a secret and token words without a token stay public."""
    assert _DETECTOR.classify(text).findings == (), _found(text)


def test_judge_separates_secrets_words_and_placeholders() -> None:
    """The value judge: secret shapes certain, plain words uncertain, non-values none."""
    assert judge("hunter2", "is", quoted=False) is True
    assert judge("sunshine", "is", quoted=False) is False
    assert judge("incorrect", "is", quoted=False) is None
    assert judge("<YOUR_PASSWORD>", ":", quoted=False) is None
    assert judge("4711", None, quoted=False, pin=True) is True
    assert judge("12", None, quoted=False, pin=True) is None
    assert judge_token("4d7a1c9e8b2f6035a9c1e7d4b8f20a63") is True
    assert judge_token("expires") is None


_WORDS = [
    "password", "Passwort", "Kennwort", "mot de passe", "contraseña", "wachtwoord",
    "passphrase", "mdp", "pw", "pwd", "clave",
]  # fmt: skip
_CONNECTORS = [" is ", ": ", " = ", " lautet ", " c'est ", " es ", " ist ", " est "]


def _secret_like(s: str) -> bool:
    """Letters and digits, four distinct characters, not a ``%NAME%`` placeholder."""
    has_both = any(c.isdigit() for c in s) and any(c.isalpha() for c in s)
    return has_both and len(set(s)) > 3 and not (s[0] == "%" and s[-1] == "%")


_SECRET = st.text(
    st.sampled_from("abcdefghjkmnpqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789!#%&*+-_"),
    min_size=8,
    max_size=24,
).filter(_secret_like)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(_WORDS), st.sampled_from(_CONNECTORS), _SECRET, st.sampled_from(["", "."]))
def test_a_secret_after_any_credential_word_is_found(
    word: str, connector: str, secret: str, end: str
) -> None:
    """A token with letters and digits after any credential word and connector is found."""
    text = f"btw the {word}{connector}{secret}{end} thanks"
    verdict = _DETECTOR.classify(text)
    assert verdict.level is Level.RESTRICTED, text
    spans = [(f.start, f.end) for f in verdict.findings]
    start = text.index(secret)
    assert any(s <= start and start + len(secret) <= e for s, e in spans), text


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.text(max_size=30),
            st.sampled_from(_WORDS + _CONNECTORS + ["[at]", " dot ", "@", "(at)", "{dot}", ":"]),
        ),
        max_size=14,
    )
)
def test_scan_never_raises_on_credential_and_address_pieces(parts: list[str]) -> None:
    """Any mix of credential words, connectors and address pieces scans without error."""
    text = "".join(parts)
    for f in _DETECTOR.classify(text).findings:
        assert 0 <= f.start < f.end <= len(text)
