//! How much to prune: a fraction of what remains, or an absolute count.

use crate::error::{PruneError, Result};
use std::fmt;
use std::str::FromStr;

/// An amount to prune, as PyTorch's `amount` argument: a Python `int` is a count of units
/// (entries or channels), a Python `float` is a fraction of the units still unpruned.
/// `Count(1)` prunes one unit; `Fraction(1.0)` prunes all of them.
///
/// ```
/// use tch_prune::Amount;
/// assert_eq!(Amount::Fraction(0.5).to_count(5).unwrap(), 2); // round half to even, as Python
/// assert_eq!(Amount::Count(3).to_count(5).unwrap(), 3);
/// assert_eq!("0.3".parse::<Amount>().unwrap(), Amount::Fraction(0.3));
/// assert_eq!("12".parse::<Amount>().unwrap(), Amount::Count(12));
/// ```
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Amount {
    /// An absolute number of units.
    Count(i64),
    /// A fraction in `[0, 1]` of the units that remain.
    Fraction(f64),
}

impl Amount {
    /// Checks the amount on its own, as PyTorch does when a method is built:
    /// a count must be non-negative, a fraction must lie in `[0, 1]`. NaN is rejected here
    /// (PyTorch rejects it one step later, when it computes the mask).
    pub fn validate(self) -> Result<Self> {
        match self {
            Amount::Count(n) if n < 0 => Err(PruneError::InvalidAmount(self.to_string())),
            Amount::Fraction(f) if !(0.0..=1.0).contains(&f) => {
                Err(PruneError::InvalidAmount(self.to_string()))
            }
            _ => Ok(self),
        }
    }

    /// The number of units to prune out of `size`, checked against `size`.
    ///
    /// A fraction is rounded half to even on the double-precision product, like Python's
    /// `round(amount * size)`: 0.5 × 5 = 2.5 prunes 2, not 3.
    pub fn to_count(self, size: i64) -> Result<i64> {
        let count = match self.validate()? {
            Amount::Count(n) => n,
            Amount::Fraction(f) => (f * size as f64).round_ties_even() as i64,
        };
        if count > size {
            return Err(PruneError::AmountTooLarge {
                amount: count,
                available: size,
            });
        }
        Ok(count)
    }
}

impl fmt::Display for Amount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Amount::Count(n) => write!(f, "{n}"),
            // Always show a decimal point, so a fraction never reads as a count.
            Amount::Fraction(x) if x.is_finite() && x.fract() == 0.0 => write!(f, "{x:.1}"),
            Amount::Fraction(x) => write!(f, "{x}"),
        }
    }
}

impl From<i64> for Amount {
    fn from(n: i64) -> Self {
        Amount::Count(n)
    }
}

impl From<f64> for Amount {
    fn from(f: f64) -> Self {
        Amount::Fraction(f)
    }
}

/// Parses as Python reads a literal: `12` is a count, `0.3`, `1.0`, `1e-1` are fractions.
impl FromStr for Amount {
    type Err = PruneError;

    fn from_str(s: &str) -> Result<Self> {
        let s = s.trim();
        let looks_float = s.contains(['.', 'e', 'E']) || s.to_ascii_lowercase().contains("inf");
        let parsed = if looks_float {
            s.parse::<f64>().ok().map(Amount::Fraction)
        } else {
            s.parse::<i64>().ok().map(Amount::Count)
        };
        parsed
            .ok_or_else(|| PruneError::InvalidAmount(format!("'{s}'")))?
            .validate()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounding_matches_python_round_half_to_even() {
        // (amount, size, expected) from the spec's table, checked on PyTorch 2.13.
        let cases = [
            (0.5, 5, 2),
            (0.5, 3, 2),
            (0.5, 1, 0),
            (0.25, 2, 0),
            (0.3, 5, 2),
            (0.1, 15, 2),
            (0.1, 25, 2),
            (0.7, 5, 4),
            (0.35, 10, 4),
            (0.45, 10, 4),
            (0.15, 10, 2),
            (0.05, 10, 0),
            (0.625, 4, 2),
            (0.4, 17, 7),
            (1.0, 15, 15),
        ];
        for (amount, size, expected) in cases {
            assert_eq!(
                Amount::Fraction(amount).to_count(size).unwrap(),
                expected,
                "{amount} x {size}"
            );
        }
    }

    // test_pruning.py: test_validate_pruning_amount_init
    #[test]
    fn validation_at_init() {
        for bad in [
            Amount::Fraction(1.1),
            Amount::Fraction(20.0),
            Amount::Count(-10),
        ] {
            assert!(matches!(bad.validate(), Err(PruneError::InvalidAmount(_))));
        }
        assert!(Amount::Fraction(f64::NAN).validate().is_err());
        assert!(Amount::Fraction(f64::INFINITY).validate().is_err());
        assert!(Amount::Fraction(-0.1).validate().is_err());
        for good in [
            Amount::Fraction(0.34),
            Amount::Count(1500),
            Amount::Count(0),
            Amount::Fraction(0.0),
            Amount::Count(1),
            Amount::Fraction(1.0),
        ] {
            assert_eq!(good.validate().unwrap(), good);
        }
    }

    // test_pruning.py: test_validate_pruning_amount
    #[test]
    fn validation_against_size() {
        assert!(matches!(
            Amount::Count(20).to_count(19),
            Err(PruneError::AmountTooLarge {
                amount: 20,
                available: 19
            })
        ));
        assert_eq!(Amount::Fraction(0.3).to_count(0).unwrap(), 0);
        assert_eq!(Amount::Count(19).to_count(20).unwrap(), 19);
        assert_eq!(Amount::Count(0).to_count(0).unwrap(), 0);
        assert_eq!(Amount::Count(1).to_count(1).unwrap(), 1);
    }

    // test_pruning.py: test_compute_nparams_to_prune
    #[test]
    fn count_versus_fraction() {
        assert_eq!(Amount::Count(0).to_count(15).unwrap(), 0);
        assert_eq!(Amount::Count(10).to_count(15).unwrap(), 10);
        assert_eq!(Amount::Count(1).to_count(15).unwrap(), 1);
        assert_eq!(Amount::Fraction(1.0).to_count(15).unwrap(), 15);
        assert_eq!(Amount::Fraction(0.4).to_count(17).unwrap(), 7);
    }

    #[test]
    fn parsing_follows_python_literals() {
        assert_eq!("1".parse::<Amount>().unwrap(), Amount::Count(1));
        assert_eq!("1.0".parse::<Amount>().unwrap(), Amount::Fraction(1.0));
        assert_eq!("1e-1".parse::<Amount>().unwrap(), Amount::Fraction(0.1));
        assert_eq!(".5".parse::<Amount>().unwrap(), Amount::Fraction(0.5));
        for bad in ["abc", "", "-3", "1.5", "nan", "inf", "0.3x"] {
            assert!(bad.parse::<Amount>().is_err(), "{bad}");
        }
        assert_eq!(Amount::Fraction(1.0).to_string(), "1.0");
        assert_eq!(Amount::Count(3).to_string(), "3");
    }
}
