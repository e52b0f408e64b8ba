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


# --------------------------------------------------------------------------------------
# Generalisation (issue 13, validation feedback): phrasings, word orders, wrappers and
# languages that no rule was written for, each one written for these tests.

_GENERALISED_SECRETS = [
    "la clave del wifi es Pepito2023",
    "mi clave: gatito99",
    "te paso la contraseña: Mar1posa!",
    "usuario y contraseña: jlopez / Verano2024",
    "el PIN de la tarjeta es 4821",
    "La contraseña del correo es solete77",
    "Contraseña nueva -> Xk9#pq2L",
    "[10:02] Ana: la clave es TorreAzul88",
    "Ana (10:02): la contra es perrito12",
    "oye, la pass del router es MiCasa2020",
    "pass: Gato!1234",
    "Clave: Zaragoza#21",
    'Mi contraseña es "luna llena" no se la digas a nadie',
    "Te mando mis credenciales: usuario pgarcia, clave Rio2022",
    "usuario: pgarcia\ncontraseña: Rio2022",
    "el código PIN es 7730",
    "mon mdp c'est Soleil2022",
    "mdp : chaton44",
    "mot de passe : Bordeaux!33",
    "le code c'est 4512",
    "identifiant / mdp : jdupont / Paris2021",
    "voici mes identifiants : jdupont et Paris2021",
    "Le mot de passe du wifi est maisonbleue75",
    "Mot de passe: LapinRose",
    "[09:15] Luc: le mdp c'est Azerty123",
    "mon code PIN est 8841",
    "PW: Sommer2023!",
    "Kennwort: Berlin1989",
    "Zugangsdaten: mmueller / Hamburg#77",
    "Benutzer/Passwort: mmueller/Hamburg77",
    "das Passwort ist Kaffee2024",
    "Die PIN lautet 9372",
    "Mein PW ist hund123",
    "Passwort für das WLAN: Sonnenschein42",
    "ww: Fietsen2022",
    "het wachtwoord is Tulp1234",
    "inlog: jansen / Amsterdam22",
    "mijn pincode is 5567",
    "my password is hunter22",
    "password - Tr0ub4dor",
    "pwd=Summer2024",
    "login: jsmith, pw: Winter2023",
    "creds are jsmith / Spring!23",
    "the PIN for my card is 6642",
    "my pin's 8813",
    "username jsmith password Summer2024",
    "user: jsmith pass: Summer2024",
    "Password:\nBlueSky2024!",
    "the api key is 8f3kd93kdl2mdk39dkw0qpxm",
    "here's the token -> ZXlKaGJHY2lPaUpJVXpJ1NiIsInR5cCI6",
    "Schlüssel: a8Fk29dLqP0xZ7vB3nM1",
    "clé: Kp92mXz7QwErT5yU8iO3",
    "sleutel = Hq83kLm20PxZ7nB4vC1q",
    "secret: 9aF3kL0pQ2zX8cV7bN6m",
    "the access token for staging is 'eyJ0eXAiOiJKV1QiLCJhbGciOiJIUzI1NiJ9xx'",
    "token: 4f9a0c3e8b7d6a5f4e3d2c1b0a9f8e7d",
    "token 4f9a0c3e8b7d6a5f4e3d2c1b0a9f8e7d for the CI",
    "key: AbCdEf0123456789GhIjKl",
    "la clé API: 7Hq2kPz9Lm3Xw8Vb1Nc4",
    "api_key,user\nAbCdEf0123456789GhIjKl,bob",
    "name,password\nbob,Sunny2024\nalice,Rainy2023",
    "user;contraseña\npgarcia;Rio2022",
    "nom,mdp\nDupont,Paris2021",
    "PIN,name\n4821,bob",
    "DB_PASSWORD=Sup3rS3cret",
    "db.Passwort: Geheim2024",
    "MYSQL_ROOT_PASSWORD: rootpw2024",
    "AUTH_HEADER=Basic-dXNlcjpwYXNz1234",
    "stripe-private: pk9283kdmzlqp2",
    "SMTP_CREDENTIAL=mailpass2024",
    "x_contrasena=Clave2024",
    "DB_PWD=hunter22",
    "app.secretKey=k29dL0qP3mZ8xV7b",
    "PRIVATE_KEY_PASSPHRASE=Horse!Battery",
    "He cambiado la contraseña a Girasol2025, apúntala",
    "puse como contraseña Tortuga_88 para el portal",
    "la nueva contraseña será Nube-Roja-42",
    "la contraseña que puse es Limon#2024",
    "usa la clave Palmera77 para entrar",
    "contraseña de acceso al portal → Cactus_2023",
    "Mi contraseña sigue siendo Pelota99",
    "¿me recuerdas la contraseña? Creo que era Almendra12",
    "Para el banco uso la contraseña Sevilla.1990",
    "Hola Marta, la contraseña actual del wifi: Casa-Verde-2024. Saludos",
    "Contraseña provisional: Temporal#01",
    "contraseña=Oviedo2022",
    "Te dejo la contraseña aquí: Zorro!Gris7",
    "La clave de mi correo es “Pingüino2020”",
    "las credenciales son admin / Campo2024",
    "mi usuario es pgarcia y mi contraseña Rio2022",
    "Entra con el usuario pgarcia y la contraseña Rio2022",
    "J'ai changé le mot de passe en Citron2024",
    "le nouveau mot de passe sera Fleur-Bleue-8",
    "le mot de passe que j'ai mis est Nuage#77",
    "utilise le mdp Lapin2022 pour te connecter",
    "Mot de passe provisoire : Temp#2024",
    "mes identifiants : jdupont / Paris2021",
    "connecte-toi avec jdupont et le mot de passe Paris2021",
    "Ich habe das Passwort auf Sonne2024 geändert",
    "das neue Passwort wird Mond-Stern-7 sein",
    "Passwort vorläufig: Temp#2024",
    "melde dich mit mmueller und dem Passwort Hamburg77 an",
    "Das Kennwort für den Server lautet jetzt Falke!99",
    "I changed the password to Falcon2024",
    "the new password will be Moon-Star-7",
    "password (temporary): Temp#2024",
    "I set my password as Kiwi!Fruit9 yesterday",
    "the password I picked is Ocean#2021",
    "use the password Maple2020 to get in",
    "user jdoe with password Maple2020",
    "my PIN is still 4432",
    "PIN: 058213",
    "Code PIN : 4471",
    "PIN-Code 9922",
    "el pin es 3310",
    "Tu PIN nuevo: 6601",
    "de pincode is 7741",
    "Meine PIN ist 2290",
    "the code for the safe is 7735",
    "Türcode 4590#",
    "[2024-03-01 10:02] <marc> pw for the nas is Qwerty!234",
    "10:02 - Jens: Passwort fürs NAS: Brummbär77",
    "Jens, 10:03: benutzer jens.k passwort Brummbaer77",
    "WhatsApp: [01/03/24, 10:02:11] Lucía: usuario lucia.g contraseña Mar1posa!",
    "> Marc: mdp wifi = Chouette#2023",
    "Alice: login is alice.w and the pass is Tulip-Garden-9",
    "username: a.smith\npassword: Sunflower!8",
    "User name - a.smith, Password - Sunflower8",
    "Login / PW: a.smith / Sunflower8",
    "account jdoe, password hunter42",
    "her login is ksmith, password Lemon#Tree5",
    "je me connecte avec jdupont / Paris2021",
    "inloggen met jansen en wachtwoord Tulp1234",
    "Benutzername mmueller, Kennwort Hamburg77",
    "usuario: pgarcia, clave: Rio2022",
    "E-Mail: k.fischer@posteo.de / PW: Rheinblick#4",
    "creds for the test box: root:Tr0pic4l!",
    "ssh root@10.0.0.5 with password Tr0pic4l!",
    "log in to the portal with id 40418 and pin 7731",
    "the sftp login is deploy / Xy7!pQ2m",
    "id: marta.r pass: Girasol2025",
    "email,password\nbob@posteo.de,Sunny2024",
    '"user","pwd"\n"bob","Sunny2024"',
    "Name;Passwort\nMüller;Sommer2024",
    "username|password\nadmin|S3cret!Pass",
    "PIN code;Name\n4821;Jan",
    "token,owner\nghx9aK2pQ7mZ3vL8cN1bT6wY4rE5uI0o,ci",
]

_GENERALISED_PUBLIC = [
    "Set DB_PASSWORD=<YOUR_PASSWORD> in the .env file",
    "password: ${DB_PASSWORD}",
    "token: YOUR_TOKEN_HERE",
    'api_key = "your-api-key-here"',
    "password = ********",
    "password: xxxxx",
    "Use password: changeme only in dev",
    "password=example",
    "password: dummy",
    "la contraseña es incorrecta",
    "olvidé mi contraseña, ¿cómo la restablezco?",
    "le mot de passe est trop court",
    "das Passwort ist abgelaufen",
    "het wachtwoord is verlopen",
    "How do I reset my PIN?",
    "The PIN must be 4 to 8 digits.",
    "Enter your PIN 0000 to test",
    "token: <token>",
    "Authorization: Bearer {{token}}",
    "API_KEY=replace-me",
    "SECRET_KEY={secret}",
    "The token endpoint returns a JWT.",
    "I forgot my password again, help",
    "What is a good password policy?",
    "password: password",
    "The key is 2048 bits long",
    "The key idea of the paper is attention",
    "mdp = mot de passe, abréviation courante",
    "clave de Sol y clave de Fa en música",
    "TOKEN_TTL=3600\nAUTH_TYPE=oauth2\nPRIVATE_NETWORK=true",
    "primary_key: user_id2024",
    "KEY_LENGTH=2048",
    "signing_key_path=/etc/keys/signing.pem",
    "api_key_header: X-Api-Key",
    "JWT_SECRET=${JWT_SECRET}",
    'cache_key = "user:42:profile"',
    "The key 2024 finding was a drop in latency.",
    "Press key F12 to open the dev tools",
    "Use the key v2 format described in RFC 7517",
    "pin numpy==1.26.4 and torch to 2.3.1",
    "We pin the version to 3.2.1 in requirements.txt",
    "Pin 7 of the GPIO header drives the LED",
    "password hashing uses argon2id with 64 MB memory",
    "The password must have 12 characters, e.g. 1 digit and 1 symbol",
    "Reset your password at https://accounts.google.com/signin/recovery",
    "Store the password in KeePassXC or Bitwarden, not in notes.",
    "contraseña: mínimo 8 caracteres, al menos 1 número",
    "Le mot de passe doit contenir 12 caractères dont 2 chiffres",
    "Das Passwort muss 10-stellig sein",
    "The token expires after 15 minutes; refresh it with POST /oauth2/token",
    "token count: 4096 tokens in the context window GPT-4o",
    "The secret sauce of the 2024 season was defense",
    "the clave de Sol is on line 2 of the staff",
    "code: 200 OK",
    "error code: 4031 from the payment gateway",
    "HTTP status code is 404",
    "zip code 94105 is in San Francisco",
    "Your verification code will be sent by SMS",
    "la clé USB3 ne marche plus",
    "clé de voûte du projet: la version 2.0",
    "Der Schlüssel zum Erfolg ist Version 3",
    "the passphrase should be 6 words, diceware style",
    "my password manager is 1Password8",
    "SSH key: use ed25519, not rsa-2048",
    "password: <redacted>",
    "pwd: /home/user/project",
    'password = getpass.getpass("Password: ")',
    "if password == user.password_hash:",
    "password: <YOUR_PASSWORD>",
    "password: {password}",
    "DB_PASSWORD=${DB_PASSWORD}",
    "API_KEY=YOUR_API_KEY",
    "token: paste-your-token-here",
    "password: ********",
    "pw: xxxxx",
    "password: secret",
    "password=changeme",
    "api_key: example",
    "password: test123",
    "token: <insert token>",
    "password: [REDACTED]",
    "password: ●●●●●●●●",
    "password=<password>",
    "SECRET_KEY=replace_me_with_a_long_random_string",
    "clave: tu_contraseña",
    "Passwort: IhrPasswort",
    "mot de passe : votre_mot_de_passe",
    "contraseña: ********",
    'password = "..."',
    "password: TODO",
    "api_key=sk-xxxxxxxxxxxxxxxxxxxxxxxx",
    "token: abc123",
    "password: P@ssw0rd",
    "password: Password123",
    "password: admin",
    "user: admin / pass: admin",
]


@pytest.mark.parametrize("text", _GENERALISED_SECRETS)
def test_credentials_in_any_grammar_stay_on_the_device(text: str) -> None:
    """A secret near a credential word, a user/secret pair, a credential column or key
    is restricted, whatever the phrasing, word order, wrapper or language."""
    assert _DETECTOR.classify(text).level is Level.RESTRICTED, text


@pytest.mark.parametrize("text", _GENERALISED_PUBLIC)
def test_placeholders_rules_and_technical_words_stay_public(text: str) -> None:
    """Placeholders, default/example passwords, length rules, code and technical words
    after a credential word are not secrets."""
    assert _DETECTOR.classify(text).level is not Level.RESTRICTED, text


def test_a_secret_near_the_word_is_certain_only_when_it_looks_like_one() -> None:
    """Fail closed: mixed letters, digits and symbols are a certain finding; letters and
    digits alone an uncertain one (the request stays local either way)."""
    strong = _DETECTOR.classify("la contraseña que puse es Limon#2024").findings
    weak = _DETECTOR.classify("la contraseña que puse es limon2024").findings
    assert [f.certain for f in strong if f.category == "password"] == [True]
    assert [f.certain for f in weak if f.category == "password"] == [False]


def test_every_cell_of_a_credential_column_is_a_finding() -> None:
    """A CSV column headed pin/pwd/contraseña/token holds one finding per non-placeholder row."""
    text = "name;pin;note\nbob;4821;x\nann;7730;y\neve;0000;z"
    assert len([f for f in _DETECTOR.classify(text).findings if f.category == "password"]) == 2


_TOKENS_AND_CONFIG = [
    "my GitHub token: q8Xz3Lm9Pk2Vb7Nc4Rt6Wy1Ha5Jd0Fs",
    "the Slack bot token is q8Xz3Lm9Pk2Vb7Nc4Rt6Wy1Ha5Jd0Fs",
    "use this key: q8Xz3Lm9Pk2Vb7Nc4Rt6Wy1Ha5Jd0Fs",
    "API-Key für das Staging: q8Xz3Lm9Pk2Vb7Nc4Rt6Wy1Ha5Jd0Fs",
    "clé d'API : q8Xz3Lm9Pk2Vb7Nc4Rt6Wy1Ha5Jd0Fs",
    "la API key es q8Xz3Lm9Pk2Vb7Nc4Rt6Wy1Ha5Jd0Fs",
    "la llave de la API: q8Xz3Lm9Pk2Vb7Nc4Rt6Wy1Ha5Jd0Fs",
    "webhook secret (q8Xz3Lm9Pk2Vb7Nc4Rt6Wy1Ha5Jd0Fs) for prod",
    "the deploy key is 9f8e7d6c5b4a39281706f5e4d3c2b1a0",
    "my OpenAI key is q8Xz3Lm9Pk2Vb7Nc4Rt6Wy1Ha5Jd0Fs, why 429?",
    "Here is the access key and secret: AKIA2E0A8F3B244C9986 / "
    "wJalrXUtnFEMI/K7MDENG/bPxRfiCYzEXAMPLEKEY",
    "I pasted the token q8Xz3Lm9Pk2Vb7Nc4Rt6Wy1Ha5Jd0Fs into the config",
    "Token de acceso personal: q8Xz3Lm9Pk2Vb7Nc4Rt6Wy1Ha5Jd0Fs",
    "mein persönlicher Token lautet q8Xz3Lm9Pk2Vb7Nc4Rt6Wy1Ha5Jd0Fs",
    "Le jeton est q8Xz3Lm9Pk2Vb7Nc4Rt6Wy1Ha5Jd0Fs",
    "het token is q8Xz3Lm9Pk2Vb7Nc4Rt6Wy1Ha5Jd0Fs",
    "De API-sleutel: q8Xz3Lm9Pk2Vb7Nc4Rt6Wy1Ha5Jd0Fs",
    "license key: Q8XZ3-LM9PK-2VB7N-C4RT6-WY1HA",
    "the shared secret is 6b1f0e9d8c7a6b5f4e3d2c1b0a9f8e7d6c5b4a39",
    "the secret value: 'dGhpcyBpcyBhIHNlY3JldCBrZXkgZm9yIHRlc3Q='",
    "encryption key = 00112233445566778899aabbccddeeff",
    "Schlüssel für die Verschlüsselung: 3q2+7w==Zm9vYmFyYmF6cXV4MTIz",
    "the HMAC key is hunter2hunter2hunter2AB",
    "session cookie: sid=Q8xz3Lm9Pk2Vb7Nc4Rt6Wy1Ha5Jd0Fs",
    "X-API-Key: q8Xz3Lm9Pk2Vb7Nc4Rt6Wy1Ha5Jd0Fs",
    'curl -H "apikey: q8Xz3Lm9Pk2Vb7Nc4Rt6Wy1Ha5Jd0Fs" https://api.x.io',
    "https://api.x.io/v1?key=q8Xz3Lm9Pk2Vb7Nc4Rt6Wy1Ha5Jd0Fs&q=1",
    "Token -> q8Xz3Lm9Pk2Vb7Nc4Rt6Wy1Ha5Jd0Fs",
    "secret\nq8Xz3Lm9Pk2Vb7Nc4Rt6Wy1Ha5Jd0Fs",
    'export DB_PASS="Sup3r!Secret"',
    "set PGPASSWORD=Winter2024",
    '$env:AZURE_CLIENT_SECRET = "q8Xz3Lm9Pk2Vb7Nc4Rt6Wy1Ha5Jd0Fs"',
    "environment:\n  - POSTGRES_PASSWORD=Tulp2024x\n  - POSTGRES_USER=app",
    "environment:\n  MYSQL_ROOT_PASSWORD: rootpw2024",
    "[database]\nhost = db1\npassword = Hamburg77",
    "spring.datasource.password=Geheim2024",
    "db:\n  user: app\n  pass: Zebra-42-Lion",
    "SMTP_PASSWD='mailpw2024'",
    "REDIS_AUTH=Rd1s!Auth9",
    "MQTT_CREDENTIALS=user1:Mqtt2024",
    "mail.smtp.auth.password = Brief2024",
    "ADMIN_PWD: Adm1n!2024",
    '"password": "Winter2024!"',
    "<password>Winter2024!</password>",
    "password => 'Winter2024!',",
    "'PASSWORD': 'Winter2024!',",
    "DB_KENNWORT=Sommer2024",
    "CONTRASENA_BD=Oviedo2022",
    "MOT_DE_PASSE=Soleil2022",
    "WACHTWOORD=Tulp2024",
    "SECRET_KEY_BASE=9f8e7d6c5b4a39281706f5e4d3c2b1a0",
    "DJANGO_SECRET_KEY=django-insecure-k9#vt2mq-pl8x!w3@z",
    "JWT_SIGNING_KEY=Hq83kLm20PxZ7nB4vC1q",
    "APP_KEY=base64:Zm9vYmFyYmF6cXV4MTIzNDU2Nzg5MGFiY2RlZg==",
    "PRIVATE_TOKEN=glx-9aK2pQ7mZ3vL8cN1bT",
    "vault_token: hvs.CAESIJ9aK2pQ7mZ3vL8cN1bT6wY4rE5uI0o",
    "aws_secret_access_key = wJalrXUtnFEMI/K7MDENG/bPxRfiCYzEXAMPLEKEY",
    "SIM_PIN=4821",
    "ENCRYPTION_KEY=00112233445566778899aabbccddeeff",
    "passphrase: correct-horse-battery-staple",
    "username,password\njsmith,Summer2024",
    "login;mdp\njdupont;Paris2021",
    "user\tpasswort\nmmueller\tHamburg77",
    "service,api_key\nstripe,k29dL0qP3mZ8xV7bN6cY1",
    "name,pin\nbob,4821",
    "email,pass\nbob@posteo.de,hunter42",
    '"user","pwd"\n"bob","Sunny2024"',
]

_CONFIG_PUBLIC = [
    "the commit hash is 9f8e7d6c5b4a39281706f5e4d3c2b1a0e1f2a3b4",
    "UUID 123e4567-e89b-12d3-a456-426614174000 in the logs",
    "sha256: e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    "the token limit is 128000 tokens for gpt-4o-2024-08-06",
    'key = "user_profile_cache_v2"',
    "the key insight: transformers-4.41.2 fixed it",
    "Token: <your-token>",
    "secret: ${{ secrets.GITHUB_TOKEN }}",
    "api key: sk-...",
    "the key is AAAAAAAAAAAAAAAAAAAAAAAA",
    "token=null",
    "DB_PASSWORD=",
    "DB_PASSWORD=${DB_PASSWORD:?required}",
    "POSTGRES_PASSWORD_FILE=/run/secrets/db_password",
    "password: !vault |",
    'SECRET_KEY: "{{ vault_secret_key }}"',
    "AUTH_ENABLED=true",
    "TOKEN_EXPIRY=3600",
    "KEY_ID=kid-2024",
    "MAX_KEYS=500",
    "password_min_length: 12",
    "PASSWORD_HASHER=argon2",
    "auth_method: scram-sha-256",
    "PRIVATE_SUBNET=10.0.1.0/24",
    "public_key: ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl",
    "DB_PASSWORD=changeme",
    "API_KEY=<your-api-key>",
    "API_KEY=xxxxxxxxxxxxxxxxxxxx",
    "SECRET=your-secret-here",
    'password: "********"',
]


@pytest.mark.parametrize("text", _TOKENS_AND_CONFIG)
def test_tokens_config_keys_and_credential_columns_stay_on_the_device(text: str) -> None:
    """Tokens after any key/secret/token word (any language, qualifier, next line), .env/
    YAML/INI/compose keys of the credential family in five languages, credential columns."""
    assert _DETECTOR.classify(text).level is Level.RESTRICTED, text


@pytest.mark.parametrize("text", _CONFIG_PUBLIC)
def test_hashes_identifiers_settings_and_references_stay_public(text: str) -> None:
    """Hashes, UUIDs, identifiers, a credential's settings (hasher, method, length, file),
    references (${X}, {{ x }}, !vault) and placeholders are not secrets."""
    assert _DETECTOR.classify(text).level is not Level.RESTRICTED, text


_MORE_PROSE = [
    "Zugang fürs Büro-WLAN: Kaffeetasse2024",
    "Hier das neue PW fürs Kundenportal: Rhein$Main77",
    "Mein Kennwort habe ich auf Hamster!2024 geändert",
    "Als Passwort habe ich Regenbogen99 genommen",
    "Passwort vergessen? Nein, es ist Sonnenblume#3",
    "Benutzername: k.fischer / Kennwort: Rheinblick#4",
    "Die Zugangsdaten lauten k.fischer und Rheinblick44",
    "Das Passwort für den Drucker ist übrigens Drucker2024!",
    "Passwort (neu): Kiefer-Zapfen-88",
    "PIN für die EC-Karte: 7391",
    "Geheimzahl 2841, bitte nicht weitersagen",
    "Login für Jira: mmueller, PW Apfelbaum7",
    "Anmeldung mit mmueller / Apfelbaum7",
    "das pw lautet apfelbaum77",
    "Passwort = Mond&Sterne12",
    "Die Zugangsdaten für den FTP: ftpuser / Ftp!2024x",
    "Kennwort lautet jetzt: Bergsee2023",
    "I reset the password; it's now Granite#2024",
    "The password I gave you earlier (Cedar!2023) no longer works",
    "Use Maple2020! to log in, that's the admin password",
    "pwd for the wifi in the lobby: GuestNet-2024",
    "password hint: it's Rover1998",
    "new pass: Zephyr_2024",
    "the login is mark.t, password is the usual Falcon!99",
    "Password for the demo account -> Demo!2024x",
    "jouw wachtwoord is veranderd naar Fiets!2024",
    "Wachtwoord van de router: Molen7788",
    "de code van de kluis is 4471",
    "ww voor de wifi: Zonnebloem22",
    "inloggegevens: jdevries / Gracht!22",
]


@pytest.mark.parametrize("text", _MORE_PROSE)
def test_secrets_before_after_and_around_the_word_stay_on_the_device(text: str) -> None:
    """German, Dutch and English secrets with the word after the value, a qualifier
    ("fürs", "van de kluis"), a login with a pair, a hint, a PIN word without a connector."""
    assert _DETECTOR.classify(text).level is Level.RESTRICTED, text


_ORDINARY_REQUESTS = [
    "How do I store user passwords securely in Django 4.2?",
    "Write a Python function that checks if a password has at least 8 characters and 1 digit.",
    "Explain the difference between OAuth2 access tokens and refresh tokens.",
    "What's the best way to rotate API keys in AWS Secrets Manager?",
    "In Kubernetes, how do I mount a secret as an environment variable (v1.29)?",
    "def login(username, password):\n    user = db.get(username)\n"
    "    return bcrypt.checkpw(password.encode(), user.pw_hash)",
    'const token = req.headers.authorization?.split(" ")[1];',
    'if (!password || password.length < 12) throw new Error("weak password");',
    "Mi contraseña no funciona desde la actualización a iOS 17, ¿qué hago?",
    "J'ai oublié mon mot de passe Windows 11, comment le réinitialiser ?",
    "Ich habe mein Passwort vergessen und die 2FA-App verloren. Was nun?",
    "Mijn wachtwoord werkt niet meer na de update naar versie 3.2",
    "What is the default PIN for a new SIM card?",
    "My PIN was blocked after 3 attempts, how do I unblock it with the PUK?",
    "Generate a secure random password in bash using openssl rand -base64 32",
    "The API key goes in the X-Api-Key header; see docs section 4.2",
    "Rotate the JWT signing key every 90 days per policy SEC-12.",
    "Our office is at the Rijksmuseum side of Museumplein, opening hours 9-17.",
    "Please call the front desk at extension 204 for room service.",
    "The conference address is Messe Berlin, Messedamm 22, 14055 Berlin — registration opens at 8.",
    "Customer service: 0800 123 4567 (free), Mon-Fri 9-18",
    "The address space of a 32-bit process is 4 GB",
    "Send a POST to /api/v2/users with the token in the Authorization header.",
    "password_hash = hashlib.sha256(salt + password).hexdigest()",
    "I want to build a password manager like 1Password or Bitwarden in Rust 1.75",
    "The secret to a good sourdough is 72 hours of fermentation",
    "Key takeaways from Q3 2024: revenue up 12%",
    "The token bucket algorithm allows 100 requests per 60 seconds.",
    "Set the PIN length to 6 digits in the MDM profile v2.",
    "Ich wohne seit 2019 in Berlin und suche eine Wohnung.",
    "Mi dirección de correo no recibe emails desde el 3 de mayo",
    "My address changed last year; how do I update it on the DMV website?",
    "Use the code SAVE20 at checkout for 20% off",
    "Error code 0x80070005 when installing updates",
    "Der Code für das Modul ist in src/main.py Zeile 42",
    "The safe code must be 4 to 6 digits long",
    "WLAN-Schlüssel ändern: Einstellungen > WLAN > Sicherheit (WPA3)",
    "¿Cómo cambio la clave del wifi de mi router TP-Link AX1500?",
    "Comment changer le code PIN de ma carte SIM Orange ?",
    "Call me Ishmael. Some years ago, never mind how long precisely.",
    "Phone models compared: iPhone 15 vs Pixel 8 vs Galaxy S24",
    "The number of users grew from 1200 to 4500 in 2023.",
    "Login page returns 500 after upgrading to Spring Boot 3.2.1",
    "user_id, password_hash, created_at are the columns of the users table",
    "username,password_hash\nalice,$2b$12$KIXQJGv7Y8m1c3xJf0sOeuX9j1V2bQm3n4o5p6q7r8s9t0u1v2w3x",
]


@pytest.mark.parametrize("text", _ORDINARY_REQUESTS)
def test_questions_about_credentials_and_contact_data_stay_public(text: str) -> None:
    """Ordinary requests that talk about passwords, PINs, tokens, keys, codes, addresses
    and phone numbers in five languages, and code that handles them, hold no one's data."""
    assert _DETECTOR.classify(text).level is not Level.RESTRICTED, text


_CHAT_REPLIES = [
    "[10:02] dev: token pls\n[10:03] ops: q8Xz3Lm9Pk2Vb7Nc4Rt6Wy1Ha5Jd0Fs",
    "Marco: what's the wifi password?\nLaura: Girasol#2024",
    "Jens: wie war nochmal das Passwort?\nKai: Kaffee!Tasse9",
    "Luc: c'est quoi le mdp du wifi ?\nEmma: Chouette#2023",
]

_CHAT_PUBLIC = [
    "Marco: what's the wifi password?\nLaura: it's on the fridge, v2 of the note",
    "dev: token pls\nops: use the one from Vault, path secret/ci",
    "Anna: password reset link?\nBen: https://accounts.example.com/reset?step=2",
]


@pytest.mark.parametrize("text", _CHAT_REPLIES)
def test_a_secret_given_in_the_next_chat_line_stays_on_the_device(text: str) -> None:
    """A short line asking for a password or token and a secret-shaped reply on the
    next line (a chat) is an uncertain credential finding."""
    assert _DETECTOR.classify(text).level is Level.RESTRICTED, text


@pytest.mark.parametrize("text", _CHAT_PUBLIC)
def test_a_reply_without_a_secret_stays_public(text: str) -> None:
    """A reply that names where the secret is, or a link, gives none away."""
    assert _DETECTOR.classify(text).level is not Level.RESTRICTED, text


_EMAILS_AND_LOGS = [
    "Hola Pedro,\nte reenvío el acceso al panel: usuario pedro.m, contraseña Tortuga!58\nUn saludo",
    "Buenas, la contraseña del Netflix familiar ahora es: Palomitas2025",
    "Oye, apunta la clave del router: RouterCasa_77",
    "la clave wifi del piso: Gaviota-Azul-33",
    "Contraseña del banco → Leon#1987 (no la compartas)",
    "Para entrar al servidor usa root y la clave Servidor#2024",
    "Mi PIN del móvil es el 4729",
    "Acceso a la intranet: mgarcia / Intranet2024!",
    "Te cambié la contraseña, la nueva es Girasol_88",
    '{"level":"info","msg":"login ok","user":"mgarcia","contraseña":"Intranet2024!"}',
    "Clave de acceso temporal: Temp-4471-Xz",
    "Código de desbloqueo: 558201",
    "Estimada Ana: su contraseña provisional es Bienvenida2025",
    "Bonjour Paul,\nvoici le mot de passe du Wi-Fi : Maison_Bleue_12\nBonne journée",
    "Mot de passe pour la compta -> Compta#2024",
    "mes accès au NAS : admin / Nas!2024x",
    "Le code de la carte bleue, c'est 4481",
    "ton mdp provisoire sera Bienvenue2025",
    "Code d'accès à l'immeuble : 4B27A",
    "Identifiant : pmartin — Mot de passe : Lyon#1998",
    "Le nouveau code wifi est Chaton-Gris-7",
    "Chère Julie, votre mot de passe temporaire : Accueil#2025",
    '{"event":"reset","mot_de_passe":"Accueil#2025"}',
    "Hallo Tim,\nhier die Zugangsdaten für das Portal:\n"
    "Benutzer: tim.k\nPasswort: Portal#2024\nGruß",
]

_CODE_TALK = [
    "The code in main.py is 42 lines long",
    "the code is 2024-ready and tested on Python 3.12",
    "Our code of conduct: section 4 applies",
    "The status code for this request is 4031",
    "This code was written in 2019",
    "the code for the function: def f(x): return x*2",
    "Der Code ist in Zeile 42 kaputt",
    "le code est dans le fichier v2.py",
    "el código es de 2021",
    "code: Python 3.11, numpy 1.26",
]


@pytest.mark.parametrize("text", _EMAILS_AND_LOGS)
def test_credentials_in_emails_logs_and_access_codes_stay_on_the_device(text: str) -> None:
    """Spanish, French and German e-mails and JSON logs with credentials, access pairs
    after "acceso"/"accès"/"Zugang", unlock and building codes with any words between."""
    assert _DETECTOR.classify(text).level is Level.RESTRICTED, text


@pytest.mark.parametrize("text", _CODE_TALK)
def test_talk_about_source_code_is_no_access_code(text: str) -> None:
    """ "code" as source code, a status code or a code of conduct holds no secret."""
    assert _DETECTOR.classify(text).level is not Level.RESTRICTED, text


_STAND_INS = [
    "password: %PASSWORD%",
    "password = $PASSWORD",
    "PASSWORD=PASSWORD_HERE",
    "password: your-password",
    "token: {{ token }}",
    'api_key: "<api-key>"',
    "password: [your password]",
    "mot de passe : ********",
    "contraseña: xxxxxxxx",
    "Passwort: ******",
    "password: •••••••",
    'secret: "..."',
    "password: Passw0rd!",
    "the example uses password 'example123'",
    'set password to "changeme123"',
    "login with admin / admin",
    "default credentials: admin/password",
    "password: <redacted>",
    "pwd: REDACTED",
    "password=${{ secrets.DB_PASSWORD }}",
]


@pytest.mark.parametrize("text", _STAND_INS)
def test_stand_in_passwords_stay_public(text: str) -> None:
    """Templates, masks, bracketed stand-ins, leetspeak spellings of "password"
    ("P@ssw0rd!"), placeholder words with digits ("example123") and default pairs
    ("admin/password") are not anyone's secret."""
    assert _DETECTOR.classify(text).level is not Level.RESTRICTED, text
