//! The one error type of the core: every function that can reject its input returns it.

use core::fmt;

/// Why a core function rejected its input. Each variant names the offending argument.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Error {
    /// A slice has the wrong number of elements for the shape it was given with.
    Length {
        /// The argument, e.g. `"x"` or `"labels"`.
        what: &'static str,
        /// The length the shape requires.
        expected: usize,
        /// The length passed.
        got: usize,
    },
    /// A shape is impossible (zero size, kernel larger than the padded input, stride 0, ...).
    Shape {
        /// What is wrong, in words.
        what: &'static str,
    },
    /// A class label is not below the number of classes.
    Label {
        /// Index of the sample.
        index: usize,
        /// Its label.
        label: u32,
        /// Number of classes.
        classes: usize,
    },
    /// An input holds NaN or an infinity.
    NonFinite {
        /// The argument.
        what: &'static str,
        /// Index of the first non-finite element.
        index: usize,
    },
    /// A vector that must be L2-normalised has norm zero.
    ZeroNorm {
        /// The argument.
        what: &'static str,
        /// Index of the vector (row or column).
        index: usize,
    },
    /// A configuration value is out of its domain (negative scale, threshold outside [-1, 1], ...).
    Config {
        /// What is wrong, in words.
        what: &'static str,
    },
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Error::Length { what, expected, got } => {
                write!(f, "`{what}` has {got} elements, the shape needs {expected}")
            }
            Error::Shape { what } => write!(f, "invalid shape: {what}"),
            Error::Label { index, label, classes } => {
                write!(f, "label {label} of sample {index} is not below the class count {classes}")
            }
            Error::NonFinite { what, index } => {
                write!(f, "`{what}` holds a non-finite value at element {index}")
            }
            Error::ZeroNorm { what, index } => {
                write!(f, "vector {index} of `{what}` has norm zero and cannot be normalised")
            }
            Error::Config { what } => write!(f, "invalid configuration: {what}"),
        }
    }
}

impl core::error::Error for Error {}

/// Checks that `slice` has exactly `expected` elements.
#[inline]
pub(crate) fn check_len<T>(what: &'static str, slice: &[T], expected: usize) -> Result<(), Error> {
    if slice.len() == expected {
        Ok(())
    } else {
        Err(Error::Length { what, expected, got: slice.len() })
    }
}

/// Checks that every element of `x` is finite.
#[inline]
pub(crate) fn check_finite(what: &'static str, x: &[f32]) -> Result<(), Error> {
    match x.iter().position(|v| !v.is_finite()) {
        None => Ok(()),
        Some(index) => Err(Error::NonFinite { what, index }),
    }
}

/// Checks that every label is below `classes`.
#[inline]
pub(crate) fn check_labels(labels: &[u32], classes: usize) -> Result<(), Error> {
    match labels.iter().position(|&l| l as usize >= classes) {
        None => Ok(()),
        Some(index) => Err(Error::Label { index, label: labels[index], classes }),
    }
}
