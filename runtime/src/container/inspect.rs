//! `Container::inspect`: Docker's `container inspect` document.
