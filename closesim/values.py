"""How the simulated Close checks and stores emails and phones: the simulator's own rules, kept apart
from the product's normalisation so that a bug there cannot make the simulator agree with it.

Close refuses an email that is not one and stores a phone in E.164 with a formatted copy; which
numbers count as phones is libphonenumber's call (a possible number, US when no country code).
"""

from __future__ import annotations

from functools import lru_cache

import phonenumbers
from email_validator import EmailNotValidError, validate_email

PHONE_REGION = "US"


@lru_cache(maxsize=65_536)
def email_ok(value: str) -> bool:
    try:
        validate_email(value.strip(), check_deliverability=False)
    except (EmailNotValidError, ValueError):
        return False
    return True


@lru_cache(maxsize=65_536)
def phone_fields(value: str) -> dict[str, str] | None:
    """``{"phone": <E.164>, "phone_formatted": <international>}``, or None when it is no phone."""
    try:
        number = phonenumbers.parse(value.strip(), PHONE_REGION)
    except phonenumbers.NumberParseException:
        return None
    if not phonenumbers.is_possible_number(number):
        return None
    e164 = phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
    # formatted from the stored E.164, so an extension dropped there is not shown either
    shown = phonenumbers.format_number(phonenumbers.parse(e164, None), phonenumbers.PhoneNumberFormat.INTERNATIONAL)
    return {"phone": e164, "phone_formatted": shown}
