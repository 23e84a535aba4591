//! Logging macros: the gateway tags every line with campaign, lane and event.

/// Log at an explicit [`Level`] with `format!` arguments.
#[macro_export]
macro_rules! log {
    ($level:expr, $($arg:tt)+) => {
        $crate::bindings::hooklane::plugin::logging::log($level, &::std::format!($($arg)+))
    };
}

/// Log at debug level with `format!` arguments.
#[macro_export]
macro_rules! debug {
    ($($arg:tt)+) => { $crate::log!($crate::bindings::hooklane::plugin::logging::Level::Debug, $($arg)+) };
}

/// Log at info level with `format!` arguments.
#[macro_export]
macro_rules! info {
    ($($arg:tt)+) => { $crate::log!($crate::bindings::hooklane::plugin::logging::Level::Info, $($arg)+) };
}

/// Log at warn level with `format!` arguments.
#[macro_export]
macro_rules! warn {
    ($($arg:tt)+) => { $crate::log!($crate::bindings::hooklane::plugin::logging::Level::Warn, $($arg)+) };
}

/// Log at error level with `format!` arguments.
#[macro_export]
macro_rules! error {
    ($($arg:tt)+) => { $crate::log!($crate::bindings::hooklane::plugin::logging::Level::Error, $($arg)+) };
}
