//! [`Shared`]: an error behind an `Arc`, so reports that must be cloned and compared (a
//! guest's [`GuestFault`](crate::GuestFault), an eviction's result) can keep the typed error
//! with its source chain instead of flattening it to a string.

use std::fmt;
use std::sync::Arc;

/// A cloneable, comparable handle to an error. Two are equal when they say the same thing.
#[derive(Debug)]
pub struct Shared<E>(pub Arc<E>);

impl<E> Clone for Shared<E> {
    fn clone(&self) -> Self {
        Self(self.0.clone())
    }
}

impl<E> Shared<E> {
    /// Wraps `e`.
    pub fn new(e: E) -> Self {
        Self(Arc::new(e))
    }

    /// The error.
    pub fn get(&self) -> &E {
        &self.0
    }
}

impl<E> From<E> for Shared<E> {
    fn from(e: E) -> Self {
        Self::new(e)
    }
}

impl<E: fmt::Display> fmt::Display for Shared<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl<E: std::error::Error + 'static> std::error::Error for Shared<E> {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(self.0.as_ref())
    }
}

impl<E: fmt::Display> PartialEq for Shared<E> {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0) || self.0.to_string() == other.0.to_string()
    }
}

impl<E: fmt::Display> Eq for Shared<E> {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clones_compare_and_keep_the_source() {
        let a = Shared::new(std::io::Error::from_raw_os_error(libc::EIO));
        let b = a.clone();
        assert_eq!(a, b);
        assert_eq!(a, Shared::new(std::io::Error::from_raw_os_error(libc::EIO)));
        assert_ne!(
            a,
            Shared::new(std::io::Error::from_raw_os_error(libc::ENOSPC))
        );
        let src = std::error::Error::source(&a).unwrap();
        assert_eq!(src.to_string(), a.get().to_string());
    }
}
