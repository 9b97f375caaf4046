#pragma once
/// @file official.hpp
/// What every named algorithm shares: the `flatmin::official` tag and the `preset` its options are
/// declared for.
///
/// `flatmin::official` selects an algorithm's *official preset*, the configuration that reproduces
/// the authors' public implementation where the library departs from it by default (for example
/// `flatmin::fsam(params, base, flatmin::official)`). Each algorithm header lists what its preset
/// changes; README's "Departures from the official code" table lists them all.
///
/// How an algorithm's options are built. The options themselves are declared once, in the policies
/// (`perturb::l2::rho`, `mask::fisher::keep`, `optimizer_options::on_nonfinite`), and the optimizer
/// is built from one `composition` of them (optimizer/composition.hpp):
///
///     flatmin::fsam_t<float, flatmin::base::adam>(params, {.base = {.lr = 1e-3},
///                                                          .perturb = {.rho = 0.05},
///                                                          .mask = {.keep = 0.1}});
///
/// An algorithm's option struct (`fsam_options`) is the flat spelling of that composition with the
/// paper's defaults, so that `flatmin::fsam(params, base, {.rho = 0.05, .keep = 0.1})` reads as the
/// paper does. Its fields repeat the names of the policy fields they set: that repetition is the
/// price of flat designated initializers, which C++20 lets name only the aggregate's own members
/// (neither a base class's nor a member's members), and it is the only one. Each struct turns into
/// the composition in one place, its `compose(base)`; a factory adds nothing to it but what its
/// algorithm fixes (ASAM's choice of scaled tensors). An official preset is not another struct but
/// another `preset` of the same one: `fsam_official_options` is `fsam_preset_options<preset::official>`,
/// whose defaults are the official code's, so `fsam(params, base, official, {.keep = 0.2})` starts
/// from them; SSAM's presets fix fields of the one struct instead (ssam.hpp). Tests:
/// tests/unit/test_algorithm_options.cpp checks that every field of every struct reaches its policy.

namespace flatmin {

/// Tag type of the official presets.
struct official_t {
  explicit constexpr official_t() = default;
};
/// Pass as the third argument of a named composition to get its official preset.
inline constexpr official_t official{};

/// Whose defaults an algorithm's option struct carries: the library's (the paper's, with the
/// library's few choices) or the official code's.
enum class preset : unsigned char { library, official };

}  // namespace flatmin
