//! Money as integer minor units. Amounts are parsed from the JSON number's
//! text and written back as a JSON number literal, so no value ever passes
//! through binary floating point (0.1 × 3 is 0.30, exactly).

use std::fmt;
use std::str::FromStr;

use rust_decimal::Decimal;
use serde::de::Error as _;
use serde_json::value::RawValue;

/// Number of decimal places every orderflow amount carries.
pub const SCALE: u32 = 2;
const FACTOR: i64 = 100;
/// Largest unit price accepted (10 000 000 000.00): keeps every order total
/// (≤ 100 items × 10 000 units) far inside `i64`.
pub const MAX_UNIT_MINOR: i64 = 1_000_000_000_000;

#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Money(i64);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MoneyError {
    #[error("must be a number")]
    NotANumber,
    #[error("must have at most 2 decimal places")]
    TooPrecise,
    #[error("is out of range")]
    OutOfRange,
}

impl Money {
    pub const ZERO: Money = Money(0);

    pub const fn from_minor(minor: i64) -> Self {
        Money(minor)
    }

    pub const fn minor(self) -> i64 {
        self.0
    }

    /// Parses the text of a JSON number (`4.5`, `4.50`, `45e-1`, `12`).
    pub fn parse(text: &str) -> Result<Self, MoneyError> {
        let text = text.trim();
        let looks_numeric = text
            .bytes()
            .all(|b| b.is_ascii_digit() || matches!(b, b'-' | b'+' | b'.' | b'e' | b'E'));
        if text.is_empty() || !looks_numeric {
            return Err(MoneyError::NotANumber);
        }
        let value = if text.contains(['e', 'E']) {
            Decimal::from_scientific(text)
        } else {
            Decimal::from_str_exact(text)
        }
        .map_err(|e| match e {
            rust_decimal::Error::ExceedsMaximumPossibleValue
            | rust_decimal::Error::LessThanMinimumPossibleValue
            | rust_decimal::Error::ScaleExceedsMaximumPrecision(_) => MoneyError::OutOfRange,
            _ => MoneyError::NotANumber,
        })?
        .normalize();
        if value.scale() > SCALE {
            return Err(MoneyError::TooPrecise);
        }
        let minor = value
            .checked_mul(Decimal::from(FACTOR))
            .ok_or(MoneyError::OutOfRange)?;
        i64::try_from(minor)
            .map(Money)
            .map_err(|_| MoneyError::OutOfRange)
    }

    pub fn checked_add(self, other: Money) -> Option<Money> {
        self.0.checked_add(other.0).map(Money)
    }

    pub fn checked_sub(self, other: Money) -> Option<Money> {
        self.0.checked_sub(other.0).map(Money)
    }

    pub fn checked_mul(self, quantity: u32) -> Option<Money> {
        self.0.checked_mul(i64::from(quantity)).map(Money)
    }

    /// `total / count`, rounded half up to the cent; `None` for no items.
    pub fn average(total: Money, count: i64) -> Option<Money> {
        (count > 0).then(|| {
            let (t, n) = (i128::from(total.0), i128::from(count));
            let doubled = 2 * t.abs() + n;
            let rounded = (doubled / (2 * n)) as i64;
            Money(if t < 0 { -rounded } else { rounded })
        })
    }

    pub fn is_negative(self) -> bool {
        self.0 < 0
    }

    /// Sum of many amounts; `None` on overflow.
    pub fn sum<I: IntoIterator<Item = Money>>(items: I) -> Option<Money> {
        items
            .into_iter()
            .try_fold(Money::ZERO, |acc, m| acc.checked_add(m))
    }
}

impl fmt::Display for Money {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sign = if self.0 < 0 { "-" } else { "" };
        let abs = self.0.unsigned_abs();
        write!(
            f,
            "{sign}{}.{:02}",
            abs / FACTOR as u64,
            abs % FACTOR as u64
        )
    }
}

impl FromStr for Money {
    type Err = MoneyError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Money::parse(s)
    }
}

/// Serialized as a JSON number literal with two decimals (`9.00`). JSON only:
/// documents for MongoDB store `minor()` as an integer instead.
impl serde::Serialize for Money {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let raw = RawValue::from_string(self.to_string()).map_err(serde::ser::Error::custom)?;
        raw.serialize(serializer)
    }
}

impl<'de> serde::Deserialize<'de> for Money {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let raw = Box::<RawValue>::deserialize(deserializer)?;
        Money::parse(raw.get()).map_err(D::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn averages_round_half_up_to_the_cent() {
        assert_eq!(
            Money::average(Money::from_minor(1000), 3),
            Some(Money::from_minor(333))
        );
        assert_eq!(
            Money::average(Money::from_minor(1001), 2),
            Some(Money::from_minor(501))
        );
        assert_eq!(Money::average(Money::from_minor(5), 0), None);
    }

    #[test]
    fn parses_exact_decimal_text() {
        let cases = [
            ("0", 0),
            ("4.5", 450),
            ("4.50", 450),
            ("0.1", 10),
            ("19.99", 1999),
            ("45e-1", 450),
            ("1E2", 10000),
            ("4.500", 450),
            ("-1.25", -125),
        ];
        for (text, minor) in cases {
            assert_eq!(Money::parse(text), Ok(Money::from_minor(minor)), "{text}");
        }
    }

    #[test]
    fn rejects_what_is_not_money() {
        assert_eq!(Money::parse("4.505"), Err(MoneyError::TooPrecise));
        assert_eq!(Money::parse("\"4.50\""), Err(MoneyError::NotANumber));
        assert_eq!(Money::parse("true"), Err(MoneyError::NotANumber));
        assert_eq!(Money::parse(""), Err(MoneyError::NotANumber));
        assert_eq!(Money::parse("1e400"), Err(MoneyError::OutOfRange));
        assert_eq!(
            Money::parse("99999999999999999999"),
            Err(MoneyError::OutOfRange)
        );
    }

    #[test]
    fn arithmetic_is_exact() {
        let tenth = Money::parse("0.1").unwrap();
        assert_eq!(tenth.checked_mul(3).unwrap().to_string(), "0.30");
        assert_eq!(Money::from_minor(-5).to_string(), "-0.05");
    }

    #[test]
    fn json_round_trip_writes_a_number_literal() {
        let m: Money = serde_json::from_str("9.0").unwrap();
        assert_eq!(serde_json::to_string(&m).unwrap(), "9.00");
        let v: Vec<Money> = serde_json::from_str("[0.1, 0.2]").unwrap();
        assert_eq!(Money::sum(v).unwrap().to_string(), "0.30");
    }
}
