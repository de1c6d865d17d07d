"""The product's normalisation of emails, phones (E.164) and URLs: how events and lookups compare them."""

from __future__ import annotations

import ipaddress
import re
from functools import lru_cache
from urllib.parse import urlsplit

import phonenumbers
from email_validator import EmailNotValidError, validate_email

DEFAULT_PHONE_REGION = "US"


def email_key(email: str) -> str:
    """Emails compare case-insensitively and without surrounding space."""
    return email.strip().lower()


# Event streams repeat the same people's emails and phones over and over; both checks are pure and
# cost tens of microseconds each, so they are memoised (bounded).
@lru_cache(maxsize=65_536)
def is_valid_email(email: str) -> bool:
    try:
        validate_email(email.strip(), check_deliverability=False)
    except (EmailNotValidError, ValueError):
        return False
    return True


@lru_cache(maxsize=65_536)
def to_e164(phone: str, region: str = DEFAULT_PHONE_REGION) -> str | None:
    """E.164 form of a phone number, or None when it cannot be a phone number."""
    try:
        parsed = phonenumbers.parse(phone.strip(), region)
    except phonenumbers.NumberParseException:
        return None
    if not phonenumbers.is_possible_number(parsed):
        return None
    return phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)


def phone_formatted(e164: str) -> str:
    parsed = phonenumbers.parse(e164, None)
    return phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.INTERNATIONAL)


def phone_key(phone: str, region: str = DEFAULT_PHONE_REGION) -> str:
    """Phones compare by E.164 form; an unparseable one by its digits."""
    e164 = to_e164(phone, region)
    if e164:
        return e164
    return "".join(ch for ch in phone if ch.isdigit() or ch == "+")


def url_key(url: str) -> str:
    """URLs compare without scheme, "www.", case of the host, or a trailing slash.

    Total on any text: what does not split as a URL (bad port, unclosed IPv6 bracket) compares by
    its stripped, lower-cased text.
    """
    raw = url.strip()
    if "://" not in raw:
        raw = "http://" + raw
    try:
        parts = urlsplit(raw)
        port = parts.port
    except ValueError:
        return url.strip().lower().rstrip("/")
    host = (parts.hostname or "").lower()
    if host.startswith("www."):
        host = host[4:]
    port_text = f":{port}" if port else ""
    path = parts.path.rstrip("/")
    query = f"?{parts.query}" if parts.query else ""
    return f"{host}{port_text}{path}{query}"


# Whitespace and control characters (C0, DEL, C1) never belong in a URL; Close would store them as is.
_URL_FORBIDDEN = re.compile(r"[\s\x00-\x1f\x7f-\x9f]")
# "name:" at the start of text without "://": a scheme (mailto:, data:) unless a port follows.
_OTHER_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:(?!\d*(?:[/?#]|$))")
_SCRIPT_SCHEMES = ("javascript:", "vbscript:", "data:", "file:")
_HOST_LABEL = re.compile(r"\w(?:[\w-]{0,61}\w)?")


def is_plausible_url(url: str) -> bool:
    """An http(s) URL, or a bare host with an optional port and path (``acme.com/ann``).

    Rejected: other schemes (``javascript:``, ``data:``, ``mailto:``, ``ftp://``), credentials in
    the URL, an empty or malformed host, a bad port, whitespace or control characters.
    """
    text = url.strip()
    if not text or _URL_FORBIDDEN.search(text):
        return False
    lowered = text.lower()
    if lowered.startswith(_SCRIPT_SCHEMES):
        return False
    if "://" not in text:
        if _OTHER_SCHEME.match(text):
            return False
        text = "http://" + text
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError:
        return False
    if parts.scheme.lower() not in ("http", "https") or "@" in parts.netloc or port == 0:
        return False
    host = parts.hostname
    if not host:
        return False
    if ":" in host:
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            return False
        return True
    labels = host[:-1].split(".") if host.endswith(".") else host.split(".")
    return len(host) <= 253 and all(_HOST_LABEL.fullmatch(label) for label in labels)
