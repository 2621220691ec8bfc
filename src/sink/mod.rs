//! Destinations. Voyado Engage is the one there is.

pub mod voyado;
