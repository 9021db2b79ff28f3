//! The per-buffer path of the element without Rust trampolines it does not use.
//!
//! gstreamer-rs installs a trampoline for every GstBaseTransform virtual
//! method; for the ones the element does not override, the trampoline only
//! checks for an earlier panic, wraps the pointers and calls the C parent
//! again. Four of them run on every buffer (submit_input_buffer,
//! generate_output, prepare_output_buffer, before_transform) and together
//! made cpuguard cost more per buffer than `identity` (see BENCHMARKS.md). No
//! Rust code runs in those slots, so pointing them back at GstBaseTransform's
//! own functions changes nothing but the cost; `transform_ip`, which the
//! element does implement, keeps its trampoline.

use glib::subclass::prelude::*;

use super::imp::CpuGuard;

pub(super) fn use_parent_buffer_path(klass: &mut <CpuGuard as ObjectSubclass>::Class) {
    // SAFETY: the class struct of a GstBaseTransform subclass starts with a
    // GstBaseTransformClass (repr(C) ClassStruct with the parent class first),
    // and the parent class pointer glib-rs keeps is a GstBaseTransformClass
    // that outlives every subclass. Both are only read or written here, during
    // class_init, before any instance exists.
    unsafe {
        let klass = &mut *(klass as *mut <CpuGuard as ObjectSubclass>::Class
            as *mut gst_base::ffi::GstBaseTransformClass);
        let parent = &*(CpuGuard::type_data().as_ref().parent_class()
            as *const gst_base::ffi::GstBaseTransformClass);
        klass.submit_input_buffer = parent.submit_input_buffer;
        klass.generate_output = parent.generate_output;
        klass.prepare_output_buffer = parent.prepare_output_buffer;
        klass.before_transform = parent.before_transform;
    }
}
