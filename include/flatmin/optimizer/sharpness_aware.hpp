#pragma once
/// @file sharpness_aware.hpp
/// `sharpness_aware<Precision, Backend, Perturb, Mask, Base, Descent, Regularizer, Schedule>`: the
/// composition of the policies and the step protocol. Precision is a floating type T (weights,
/// gradients and state all T) or a `precision<W, G, S>` (params/precision.hpp).
///
/// A step:
///
///     g      = ∇L(w)                                   (the caller, or the objective)
///     ε      = ρ · s · m ⊙ dir(g) / (‖norm(g)‖ + ξ)    (Perturb: dir, norm; Mask: m, s)
///     w      ← w + ε        (the perturbed entries of w are saved first)
///     g_adv  = ∇L(w + ε)                               (Descent: standard, functional, ...)
///     w      ← saved w (bit-exact), then Base(w, Regularizer(g_adv))
///
/// The Schedule (schedule/) decides per step whether to perturb; on a step it leaves unperturbed
/// the objective is called once and the base step applies to g. A descent rule or regularizer with
/// an ascent-time hook (`ascent_hook`, concepts/roles.hpp) sees g and its statistics before w moves.
/// A descent rule with state (descent/state.hpp: GSAM, WSAM, LookSAM) also adjusts the gradient the
/// base step takes, in the same fused pass, and may set this step's ρ (`radius`). A perturbation
/// with state (perturb/state.hpp: Friendly-SAM's EMA) builds the ascent's term from it.
///
/// Two protocols: `ascend()` / `descend()` around the caller's own backward pass, or
/// `step(objective)`. Misuse throws `usage_error` and leaves the weights as they were.
/// A non-finite g or g_adv never reaches the weights: the step is skipped (weights restored
/// bit-exactly, optimizer state untouched, `report.skipped`), or `non_finite_error` is thrown
/// after the same restore when the options say `nonfinite::raise`.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <exception>
#include <functional>
#include <istream>
#include <limits>
#include <ostream>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

#include "../backend/layout.hpp"
#include "../concepts/roles.hpp"
#include "../descent/standard.hpp"
#include "../descent/state.hpp"
#include "../kernels/sam_passes.hpp"
#include "../kernels/sampa.hpp"
#include "../mask/dense.hpp"
#include "../mask/detail/pass_target.hpp"
#include "../mask/detail/top_k.hpp"
#include "../mask/detail/units.hpp"
#include "../params/param_set.hpp"
#include "../params/precision.hpp"
#include "../perturb/state.hpp"
#include "../regularize/none.hpp"
#include "../schedule/always.hpp"
#include "checkpoint.hpp"
#include "clip.hpp"
#include "composition.hpp"
#include "report.hpp"
#include "weight_store.hpp"
#include "stats_reducer.hpp"

namespace flatmin {

template <class Precision, class UserBackend, class Perturb, class Mask, class Base,
          class Descent = descent::standard, class Regularizer = regularize::none,
          class Schedule = schedule::always>
class sharpness_aware {
  using W = typename detail::precision_of_t<Precision>::weight_type;
  using G = typename detail::precision_of_t<Precision>::grad_type;
  using T = typename detail::precision_of_t<Precision>::state_type;  ///< state and arithmetic
  static_assert(detail::supported_element<W> && detail::supported_element<G> && detail::supported_state<T>,
                "flatmin::sharpness_aware: the weight and gradient types must each be float, double, "
                "flatmin::bfloat16 or flatmin::half, and the state type float or double");
  static_assert(sizeof(T) >= sizeof(W),
                "flatmin::sharpness_aware: the state type must be at least as wide as the weight type (a "
                "double weight updated in float arithmetic would be rounded to float by every step)");
  /// The backend the policies' states are created for: UserBackend itself when W = G = T, else
  /// UserBackend bound to the user's element types (backend::with_elements, layout.hpp).
  using Backend = std::conditional_t<std::is_same_v<W, T> && std::is_same_v<G, T>, UserBackend,
                                     backend::with_elements<UserBackend, W, G>>;
  // One static_assert per missing capability (concepts/roles.hpp), then the pairings.
  static_assert(detail::check_backend<UserBackend>());
  static_assert(detail::check_perturbation<Perturb>());
  static_assert(detail::check_base<Base, T, Backend>());
  static_assert(detail::check_mask<Mask, T, Backend>());
  static_assert(detail::check_descent<Descent>());
  static_assert(detail::check_regularizer<Regularizer, T, Backend>());
  static_assert(detail::check_schedule<Schedule>());
  static_assert(
      detail::check_ascent_hooks<Descent, typename Regularizer::template state<T, Backend>, T, Backend>());
  static_assert(
      !requires { requires Perturb::needs_second_moment; } || Base::has_second_moment,
      "flatmin::sharpness_aware: this perturbation (perturb::preconditioned) needs a base optimizer with a "
      "second moment (has_second_moment == true: base::adam or base::adamw), and Base has none (e.g. "
      "base::sgd)");
  /// A perturbation that needs no gradient at w (perturb::momentum) leaves nothing for the policies
  /// that read it at the ascent: masks that score g, descent rules and regularizers with an ascent hook.
  static constexpr bool needs_clean_gradient = !requires { requires !Perturb::needs_clean_gradient; };
  static_assert(needs_clean_gradient || (std::is_same_v<Mask, mask::dense> &&
                                         std::is_same_v<Descent, descent::standard> &&
                                         std::is_same_v<Regularizer, regularize::none>),
                "flatmin::sharpness_aware: this perturbation (perturb::momentum, Momentum-SAM; "
                "perturb::flat_lora, Flat-LoRA; perturb::sampa, SAMPa) takes no gradient at w, so it "
                "composes with mask::dense, descent::standard and regularize::none only");
  static_assert(!requires { requires Perturb::dense_mask_only; } || std::is_same_v<Mask, mask::dense>,
                "flatmin::sharpness_aware: this perturbation looks each entry's row up (perturb::gaussian, "
                "RWP; perturb::centralized, GCSAM) or has passes of its own (perturb::flat_lora, "
                "perturb::sampa) and composes with mask::dense only");

 public:
  using precision_type = detail::precision_of_t<Precision>;
  using weight_type = W;
  using grad_type = G;
  using value_type = T;  ///< the state and compute type
  using backend_type = UserBackend;
  using perturb_type = Perturb;
  using mask_type = Mask;
  using base_type = Base;
  using descent_type = Descent;
  using regularizer_type = Regularizer;
  using schedule_type = Schedule;

  /// Whether a step takes a second gradient (false for plain base optimizers and BAR); the
  /// schedule may still leave a step unperturbed (`step_report::perturbed`).
  static constexpr bool perturbs = Perturb::perturbs;
  /// Whether the perturbation moves the trained tensors. False for one that perturbs memory outside
  /// them (perturb::flat_lora: the frozen bases of LoRA pairs): no pass over the layout then, its
  /// state applies and undoes it, and the report's mask density is 0 (no trained entry perturbed).
  static constexpr bool perturbs_layout = !requires { requires !Perturb::perturbs_layout; };
  /// Whether a step has a second gradient point after the perturbed one (perturb::sampa, SAMPa):
  /// the protocol is ascend(), backward, second_point(), backward, descend().
  static constexpr bool two_points = requires { requires Perturb::second_point; };

  /// The aggregate the optimizer is built from: one member per policy, plus `optimizer_options`.
  using composition_type = composition<Perturb, Mask, Base, Descent, Regularizer, Schedule>;

  /// Binds the optimizer to `params` (the views are copied; the memory they point to must outlive
  /// the optimizer) with the policies of `c`, e.g. `{.base = {.lr = 0.1}, .perturb = {.rho = 0.05}}`
  /// (optimizer/composition.hpp; `.base` is required). Throws std::invalid_argument for bad options
  /// (checked in T, before any state is built) or an empty / overlapping set, usage_error for a view
  /// in a memory space the backend cannot reach.
  sharpness_aware(const param_set<W, G>& params, composition_type c)
      : base_((static_cast<void>(
                   check_options(c.base, c.perturb, c.mask, c.options, c.descent, c.regularizer, c.schedule)),
               std::move(c.base))),
        perturb_(std::move(c.perturb)),
        mask_(std::move(c.mask)),
        descent_(std::move(c.descent)),
        reg_(std::move(c.regularizer)),
        schedule_(std::move(c.schedule)),
        options_(c.options),
        scaling_(options_.loss_scale.enabled),
        scaler_(scaling_ ? loss_scaler(options_.loss_scale) : loss_scaler()),
        layout_(checked(params)),
        base_state_(base_, layout_.numel()),
        mask_state_(mask_, layout_),
        reg_state_(reg_, layout_),
        descent_state_(descent_, layout_),
        perturb_state_(perturb_, layout_),
        saved_(Backend::template make_vector<W>(perturbs && perturbs_layout ? mask_state_.saved_size(layout_)
                                                                              : 0)),
        names_(names_of(params)),
        store_(options_, layout_) {
    validate();
    for (const auto& t : layout_.host_tensors())
      if (t.flags & tensor_flags::perturb) perturbable_ += t.size;
  }

  sharpness_aware(const sharpness_aware&) = delete;
  sharpness_aware& operator=(const sharpness_aware&) = delete;
  sharpness_aware(sharpness_aware&&) = default;

  /// First half of a step: with g = ∇L(w) in the gradient views, w ← w + ε (w saved). A
  /// perturbation that needs no gradient at w (`needs_clean_gradient == false`: Momentum-SAM) reads
  /// none: call ascend() before the (only) backward, which is then at w + ε.
  /// For compositions that do not perturb (`perturbs == false`) it does nothing and may be left out.
  /// On a step the schedule leaves unperturbed it does nothing either (no pass, the mask is left
  /// alone) and reports `perturbed == false`; descend() then applies the base step to g.
  step_report ascend(const step_args& args = {}) {
    if (phase_ != phase::idle)
      throw usage_error("flatmin: ascend() called twice without descend(); call descend() or cancel() first");
    validate();
    sync_scaler();
    report_ = step_report{};
    report_.step = steps_ + 1;
    if constexpr (!perturbs) {
      phase_ = phase::ascended;
      return report_;
    } else {
      const T inv = inverse_scale(args);
      if (!schedule_.perturbs_at(steps_ + 1)) {
        phase_ = phase::unperturbed;
        return report_;
      }
      if constexpr (!perturbs_layout) {  // perturb::flat_lora: no pass over the layout, no g read
        if (args.found_inf && *args.found_inf) {
          report_.skipped = true;
          report_.reason = skip_reason::found_inf;
          if (options_.on_nonfinite == nonfinite::raise) {
            phase_ = phase::idle;
            throw non_finite_error(std::string("flatmin: ascend(): ") + to_string(report_.reason));
          }
          phase_ = phase::skipped;
          return report_;
        }
        perturb_state_.apply(perturb_, layout_, steps_ + 1);
        report_.perturbation_norm = perturb_state_.perturbation_norm();
        report_.perturbed = true;
        phase_ = phase::ascended;
        return report_;
      }
      mask_state_.begin_step(mask_, steps_ + 1);
      if constexpr (requires { perturb_state_.before_statistics(perturb_, layout_, inv); })
        perturb_state_.before_statistics(perturb_, layout_, inv);  // perturb::centralized's row means
      kernels::grad_stats s = stats_and_estimate(inv);
      const bool bad_example = mask_nonfinite_examples();
      if (s.bad > 0 || !std::isfinite(s.n2) || !std::isfinite(s.g2) || (args.found_inf && *args.found_inf) ||
          bad_example) {
        report_.grad_norm = std::sqrt(s.g2);
        report_.skipped = true;
        report_.reason = (args.found_inf && *args.found_inf) ? skip_reason::found_inf
                         : bad_example                       ? skip_reason::nonfinite_example_gradient
                                                             : skip_reason::nonfinite_gradient;
        mask_abandon();
        if (options_.on_nonfinite == nonfinite::raise) {
          phase_ = phase::idle;
          throw non_finite_error(std::string("flatmin: ascend(): ") + to_string(report_.reason));
        }
        phase_ = phase::skipped;
        return report_;
      }
      if (mask_state_.refresh(mask_, layout_, steps_ + 1, inv)) {
        grow_saved();
        s = stats(inv);
      }
      double scale = 0.0;
      if constexpr (perturbation_has_fixed_scale<Perturb>) {
        scale = radius();  // ε is added as the term draws it (perturb::gaussian)
      } else {
        const double denom = std::sqrt(s.n2) + perturb_.xi;
        scale = denom > 0 ? radius() * mask_state_.radius_scale() / denom : 0.0;
      }
      // With ξ = 0 a vanishing (subnormal) g makes ρ/‖g‖ overflow T: treat it as g = 0 (ε = 0)
      // rather than write an infinite ε into the weights.
      if (!(scale <= static_cast<double>(std::numeric_limits<T>::max()))) scale = 0.0;
      const T step_scale = static_cast<T>(scale);
      on_ascent(s, scale, inv);
      store_.for_ascent([&](auto store) {
        target().for_each([&](auto view) {
          return kernels::ascend_pass<T, term_type, decltype(view), W, decltype(store)>{
              term(), view, step_scale, inv, Backend::data(saved_), store, layout_.scales()};
        });
      });
      report_.grad_norm = std::sqrt(s.g2);
      if (layout_.scales_rho())  // ‖ε‖ would need each tensor's share of the statistics
        report_.perturbation_norm = std::numeric_limits<double>::quiet_NaN();
      else if constexpr (requires { perturb_state_.perturbation_norm(); })
        report_.perturbation_norm = perturb_state_.perturbation_norm();  // its statistics are not taken
      else
        report_.perturbation_norm = scale * std::sqrt(s.d2);
      report_.mask_density = perturbable_ ? s.kept / static_cast<double>(perturbable_) : 0.0;
      report_.perturbed = true;
      phase_ = phase::ascended;
      return report_;
    }
  }

  /// The middle call of a composition with two gradient points (`two_points`: perturb::sampa,
  /// SAMPa): with the gradient at the perturbed point in the views (the backward after ascend()),
  /// checks it and keeps it, then moves the weights to the second point (SAMPa's look-ahead y);
  /// one more backward there, then descend(). A non-finite gradient skips the step here (the
  /// weights restored bit-exactly; descend() then only returns the report), or throws
  /// `non_finite_error` after the same restore with `nonfinite::raise`. On a step the schedule
  /// leaves unperturbed, or after a skipped ascent, it does nothing. usage_error without a
  /// matching ascend() or when called twice.
  step_report second_point(const step_args& args = {})
    requires two_points
  {
    if (phase_ == phase::unperturbed || phase_ == phase::skipped) return report_;
    if (phase_ != phase::ascended)
      throw usage_error(phase_ == phase::second
                            ? "flatmin: second_point() called twice; call descend() or cancel()"
                            : "flatmin: second_point() called without a matching ascend()");
    const cancel_on_throw guard(*this);
    validate();
    const T inv = inverse_scale(args);
    // the check keeps g̃ as it reads it (one read of the gradient)
    const auto c = reduce_full(kernels::check_copy_pass<T>{inv, perturb_state_.second_gradient()});
    report_.perturbed_grad_norm = std::sqrt(c.g2);
    const bool found_inf = args.found_inf && *args.found_inf;
    if (found_inf || c.bad > 0 || !std::isfinite(c.g2)) {
      restore();
      report_.skipped = true;
      report_.reason = found_inf ? skip_reason::found_inf : skip_reason::nonfinite_perturbed_gradient;
      if (options_.on_nonfinite == nonfinite::raise) {
        phase_ = phase::idle;
        scale_update(true);
        throw non_finite_error(std::string("flatmin: second_point(): ") + to_string(report_.reason));
      }
      phase_ = phase::skipped;
      return report_;
    }
    if (perturb_state_.has_point()) {
      auto update = base_state_.prepare(base_, steps_ + 1);
      if constexpr (requires { update.scales = layout_.scales(); }) update.scales = layout_.scales();
      const T* gy = perturb_state_.point_gradient();
      store_.for_ascent([&](auto store) {
        using pass = kernels::lookahead_pass<T, decltype(update), W, decltype(store)>;
        Backend::for_each(layout_.full(), pass{update, gy, Backend::data(saved_), store});
      });
    } else {
      restore();  // no g_y yet: the second point is x itself
    }
    phase_ = phase::second;
    return report_;
  }

  /// Second half: with g_adv in the gradient views, restores w exactly and applies the base step.
  /// On a step the schedule left unperturbed the views hold g and nothing is restored.
  /// Returns the step's report (`skipped` if g or g_adv was non-finite). Any exception after the
  /// misuse check (invalid options, a policy or schedule throwing) restores w bit-exactly and
  /// leaves the optimizer idle before it propagates.
  step_report descend(const step_args& args = {}) {
    if constexpr (perturbs) {
      if (phase_ == phase::idle) throw usage_error("flatmin: descend() called without a matching ascend()");
    } else {
      if (phase_ == phase::idle) {
        report_ = step_report{};
        report_.step = steps_ + 1;
      }
    }
    if constexpr (two_points)
      if (phase_ == phase::ascended)
        throw usage_error("flatmin: descend() called before second_point(): this composition (SAMPa) takes "
                          "its second gradient at the look-ahead point");
    const cancel_on_throw guard(*this);
    validate();
    if (phase_ == phase::idle) sync_scaler();  // a composition without ascent starts a step here
    if (phase_ == phase::skipped) {  // g at w was non-finite: nothing was perturbed, nothing to apply
      phase_ = phase::idle;
      scale_update(true);
      return report_;
    }
    const T inv = inverse_scale(args);
    // else the views hold g at w
    const bool perturbed = perturbs && (phase_ == phase::ascended || phase_ == phase::second);
    bool bad = false;
    double norm = 0;  // ‖g‖ or ‖g_adv‖, unscaled (what clipping reads)
    if (args.found_inf) bad = *args.found_inf;
    if (!args.found_inf || (!bad && options_.clip_grad_norm > 0)) {
      const auto c = reduce_full(kernels::check_pass<T>{inv});
      bad = bad || c.bad > 0 || !std::isfinite(c.g2);
      norm = std::sqrt(c.g2);
      (perturbed ? report_.perturbed_grad_norm : report_.grad_norm) = norm;
    }
    if (bad) {
      if (perturbed) restore();
      mask_abandon();
      phase_ = phase::idle;
      scale_update(true);
      report_.skipped = true;
      report_.reason = (args.found_inf && *args.found_inf) ? skip_reason::found_inf
                       : perturbed    ? skip_reason::nonfinite_perturbed_gradient
                                      : skip_reason::nonfinite_gradient;
      if (options_.on_nonfinite == nonfinite::raise)
        throw non_finite_error(std::string("flatmin: descend(): ") + to_string(report_.reason));
      return report_;
    }
    const std::size_t t = steps_ + 1;
    if constexpr (!perturbs_layout)
      if (perturbed) perturb_state_.undo(layout_);  // the trained tensors were not perturbed
    const T clipped = clip(inv, norm);  // optimizer/clip.hpp: inv itself when not clipping
    auto adjust = perturbation_adjust(reg_state_.prepare(reg_, layout_, t, clipped), perturbed);
    auto update = base_state_.prepare(base_, t);
    if constexpr (requires { update.scales = layout_.scales(); }) update.scales = layout_.scales();
    if constexpr (requires { descent_state_.prepare(descent_, layout_, descent::step_context{}); }) {
      // a descent rule with state (descent/state.hpp): its adjust first, then the regularizer's
      const descent::step_context ctx{t, perturbed, detail::lr_of(base_), static_cast<double>(clipped)};
      auto rule = descent_state_.prepare(descent_, layout_, ctx);
      descend_pass(detail::chained_adjust<T, decltype(rule), decltype(adjust)>{rule, adjust}, update,
                   clipped, perturbed && perturbs_layout);
      if constexpr (requires { descent_state_.finish(descent_, layout_, ctx); })
        descent_state_.finish(descent_, layout_, ctx);
    } else {
      descend_pass(adjust, update, clipped, perturbed && perturbs_layout);
    }
    if constexpr (requires { perturb_state_.commit_step(); })
      if (perturbed) perturb_state_.commit_step();
    mask_commit();
    steps_ = t;
    phase_ = phase::idle;
    scale_update(false);
    return report_;
  }

  /// One whole step with the closure protocol: `obj()` writes ∇L at the current weights and
  /// returns the loss; it is called at w, then (if the composition and its schedule perturb this
  /// step) at w + ε; once, at w + ε, for a perturbation that needs no gradient at w; twice, at
  /// w + ε and at the second point, for a composition with two points (SAMPa: `second_point()`
  /// between). Options and the protocol state are checked before the objective runs; if anything
  /// throws after the ascent (the objective at w + ε, a policy, a schedule), the weights are
  /// restored bit-exactly and the optimizer is idle before the exception propagates.
  template <class O>
  step_report step(O&& obj, const step_args& args = {}) {
    static_assert(
        requires(Descent & d, std::remove_reference_t<O> & o) {
          d.first_gradient(o);
          d.second_gradient(o);
        },
        "flatmin::step: the objective lacks what this composition's descent policy needs: for "
        "descent::standard, a callable with no argument returning the loss (flatmin::objective)");
    if (phase_ != phase::idle)
      throw usage_error(
          "flatmin: step() called between ascend() and descend(); call descend() or cancel() first");
    validate();
    sync_scaler();
    static_cast<void>(inverse_scale(args));
    // From here an exception leaves nothing behind: cancel() restores w if it moved and drops what
    // the mask collected for this step (per-example sums of an objective that threw, say).
    const cancel_on_throw guard(*this);
    // A mask may ask the objective for more before the batch gradient (SSAM-F's per-example Fisher).
    if constexpr (requires { mask_state_.before_gradient(mask_, layout_, steps_ + 1, obj); })
      if (schedule_.perturbs_at(steps_ + 1)) mask_state_.before_gradient(mask_, layout_, steps_ + 1, obj);
    double loss = 0;
    step_report r;
    if constexpr (perturbs && !needs_clean_gradient) {
      r = ascend(args);                    // ε needs no gradient (a skipped ascent: found_inf)
      if (!r.skipped) loss = descent_.first_gradient(obj);  // the one gradient: at w + ε, or at w
    } else {
      loss = descent_.first_gradient(obj);
      if constexpr (perturbs) {
        r = ascend(args);
        if (r.perturbed) descent_.second_gradient(obj);
      }
    }
    if constexpr (two_points)
      if (r.perturbed && !r.skipped && !second_point(args).skipped) descent_.second_gradient(obj);  // at y
    r = descend(args);
    r.loss = loss;
    report_.loss = loss;
    return r;
  }

  /// Abandons an ascended step: restores w bit-exactly and returns to the idle state.
  void cancel() {
    if ((phase_ == phase::ascended || phase_ == phase::second) && perturbs) restore();
    mask_abandon();
    phase_ = phase::idle;
  }

  /// True between ascend() and descend().
  bool ascended() const { return phase_ != phase::idle; }
  /// Number of applied (not skipped) steps.
  std::size_t steps() const { return steps_; }
  /// The report of the current / last step.
  const step_report& last_report() const { return report_; }

  /// Options, mutable between steps (learning-rate and ρ schedules); re-validated every call.
  Base& base() { return base_; }
  const Base& base() const { return base_; }
  Perturb& perturbation() { return perturb_; }
  const Perturb& perturbation() const { return perturb_; }
  Mask& mask() { return mask_; }
  const Mask& mask() const { return mask_; }
  Regularizer& regularizer() { return reg_; }
  Descent& descent() { return descent_; }
  Schedule& schedule() { return schedule_; }
  const Schedule& schedule() const { return schedule_; }
  optimizer_options& options() { return options_; }
  const optimizer_options& options() const { return options_; }
  /// The factor to multiply the loss by before each backward pass: the dynamic loss scale when
  /// `optimizer_options::loss_scale.enabled`, else 1 (pass your own scale in step_args then).
  double loss_scale() const {
    if (!options_.loss_scale.enabled) return 1.0;
    return scaling_ ? static_cast<double>(scaler_.scale()) : static_cast<double>(static_cast<float>(
                                                                 options_.loss_scale.init_scale));
  }
  /// The dynamic loss scaler's state (scale, growth tracker).
  const loss_scaler& scaler() const { return scaler_; }
  const backend::layout<T, Backend>& layout() const { return layout_; }
  const typename Base::template state<T, Backend>& base_state() const { return base_state_; }
  const typename Mask::template state<T, Backend>& mask_state() const { return mask_state_; }
  /// Mutable mask state (e.g. `add_example()` of `mask::fisher` in the two-call protocol).
  typename Mask::template state<T, Backend>& mask_state() { return mask_state_; }
  const typename Regularizer::template state<T, Backend>& regularizer_state() const { return reg_state_; }
  /// The descent rule's state (descent/state.hpp; `detail::no_state` for a rule without one).
  const detail::state_of_t<Descent, T, Backend>& descent_state() const { return descent_state_; }
  /// The perturbation's state (perturb/state.hpp; `detail::no_state` for a perturbation without one).
  const detail::state_of_t<Perturb, T, Backend>& perturbation_state() const { return perturb_state_; }

  /// Bytes of optimizer state beyond the base optimizer's (saved weights, mask state, master weights,
  /// the state of a descent rule or perturbation that has one).
  std::size_t extra_state_bytes() const {
    std::size_t d = 0;
    if constexpr (requires { descent_state_.bytes(); }) d = descent_state_.bytes();
    if constexpr (requires { perturb_state_.bytes(); }) d += perturb_state_.bytes();
    return saved_.size() * sizeof(W) + mask_state_.bytes() + store_.bytes() + d;
  }
  /// Bytes of the base optimizer's state.
  std::size_t base_state_bytes() const { return base_state_.bytes(); }

  /// With `options().master_weights`: the master copy ← the user's (16-bit) weights. Call it after
  /// overwriting the model's weights (loading them, editing them): the next step would otherwise
  /// start from the old master and overwrite them. Between steps only (usage_error).
  void reload_master() {
    if (phase_ != phase::idle)
      throw usage_error("flatmin: reload_master() called between ascend() and descend()");
    store_.reload(layout_);
  }

  /// Makes the step statistics global (optimizer/stats_reducer.hpp; set by data_parallel's sharded
  /// mode): the ascent's statistics and descend()'s check are then per-segment partials handed to
  /// `r`, and the mask density's denominator is `perturbable` (over every process). A mask that
  /// selects (mask::fisher, mask::dynamic) then selects over every process's units: its top-k is
  /// global (its histograms summed through `r`). Collective when `r` is set and the mask selects.
  /// nullptr: this process alone (the default). A compact mask's sums over its range are per-segment
  /// partials too (its segments never cross the layout's: mask/detail/units.hpp), so block units
  /// are sharded (a block, at most 1024 entries, never straddles a segment, hence a shard).
  /// usage_error between ascend() and descend(), and for what is not sharded: mask::random with
  /// block units, a descent rule or
  /// perturbation with state; with a selecting mask or mask::random, after the first step.
  /// mask::random then draws over the one-process unit numbers (`r->origin()`).
  void set_stats_reducer(stats_reducer* r, std::size_t perturbable) {
    if (phase_ != phase::idle)
      throw usage_error("flatmin: set_stats_reducer() called between ascend() and descend()");
    if constexpr (mask_state_type::compact) {
      constexpr bool shards = requires { mask_state_type::spans_processes; } ||
                              requires { mask_state_type::numbers_globally; };
      if (r && !shards)
        throw usage_error("flatmin: set_stats_reducer(): mask::" + std::string(Mask::name) +
                          " is not sharded yet (mask::dense, fisher, dynamic and random are)");
      if (r && mask_state_.units().kind() == mask::granularity::block) {
        if constexpr (requires { mask_state_type::numbers_globally; })
          throw usage_error("flatmin: set_stats_reducer(): mask::" + std::string(Mask::name) +
                            " with block units is not sharded yet (its draw would need the one-process "
                            "block numbers; use entry or tensor units)");
      }
    }
    // A descent rule's or perturbation's own reductions (GSAM's ⟨g, g_adv⟩, …) are not routed
    // through the reducer: sharded, they would see one shard.
    if (r && (detail::has_state<Descent, T, Backend> || detail::has_state<Perturb, T, Backend>))
      throw usage_error("flatmin: set_stats_reducer(): a descent rule or perturbation with state (GSAM, "
                        "WSAM, LookSAM, Friendly-SAM, …) has reductions of its own, not sharded yet");
    if constexpr (requires { mask_state_type::numbers_globally; }) {
      if (r && steps_ > 0)
        throw usage_error("flatmin: set_stats_reducer(): mask::" + std::string(Mask::name) +
                          " draws over every process's units from the first step on: set it before the first "
                          "step");
      const auto o = r ? r->origin() : stats_reducer::origin_t{};
      mask_state_.set_origin(o.index, o.tensor);
    }
    if constexpr (requires { mask_state_type::spans_processes; }) {
      if (r && steps_ > 0)
        throw usage_error("flatmin: set_stats_reducer(): a mask that selects (mask::" +
                          std::string(Mask::name) +
                          ") spans the processes from the first step on: set it before the first step");
      mask::detail::span sp;
      if (r) {
        const auto& u = mask_state_.units();
        sp = mask::detail::make_span(u.count(), u.eligible_units(), r->position(),
                                     [r](const std::uint64_t* mine, std::size_t n) {
                                       return r->gather_counts(mine, n);
                                     });
      }
      mask_state_.set_span(mask_, std::move(sp));
      // Spanning, a block mask's bound of active units is the shard's units (a global selection
      // may put more of them in one shard than its share).
      grow_saved();
    }
    reducer_ = r;
    perturbable_ = perturbable;
  }

  /// Mask introspection, per tensor (by index in the parameter set, or by name): one byte per
  /// entry, 1 where ε may be non-zero (entries of dense-perturbed tensors 1, of tensors that are
  /// not perturbed 0; mask::dense: all ones). The mask the next ascent uses, bar a refresh then.
  std::vector<std::uint8_t> mask_bytes(std::size_t tensor) const {
    check_tensor(tensor);
    if constexpr (requires { mask_state_.entry_mask(layout_, tensor); }) {
      return mask_state_.entry_mask(layout_, tensor);
    } else {
      const auto& r = layout_.host_tensors()[tensor];
      return std::vector<std::uint8_t>(r.size, (r.flags & tensor_flags::perturb) ? 1 : 0);
    }
  }
  std::vector<std::uint8_t> mask_bytes(std::string_view name) const { return mask_bytes(tensor_index(name)); }
  /// The selected entries of a tensor (tensor-local indices, ascending).
  template <class Tensor>
  std::vector<std::size_t> mask_indices(const Tensor& tensor) const {
    const auto b = mask_bytes(tensor);
    std::vector<std::size_t> r;
    for (std::size_t j = 0; j < b.size(); ++j)
      if (b[j]) r.push_back(j);
    return r;
  }
  /// The number of selected entries of a tensor.
  template <class Tensor>
  std::size_t mask_count(const Tensor& tensor) const {
    const auto b = mask_bytes(tensor);
    return static_cast<std::size_t>(std::count(b.begin(), b.end(), std::uint8_t{1}));
  }
  /// Sets the mask of a tensor (load one computed elsewhere; with the mask's `frozen` option it
  /// stays). Throws std::invalid_argument for a byte vector of the wrong size or one that splits a
  /// unit (block masks: a block is all-or-nothing), usage_error between ascend() and descend() or
  /// for a mask that cannot be set (mask::dense).
  void set_mask(std::size_t tensor, const std::vector<std::uint8_t>& mask) {
    if (phase_ != phase::idle) throw usage_error("flatmin: set_mask() called between ascend() and descend()");
    check_tensor(tensor);
    if constexpr (requires { mask_state_.set_entry_mask(layout_, tensor, mask); }) {
      mask_state_.set_entry_mask(layout_, tensor, mask);
      grow_saved();
    } else {
      throw usage_error(
          "flatmin: set_mask(): this mask has no state to set (mask::dense perturbs "
          "every entry)");
    }
  }
  void set_mask(std::string_view name, const std::vector<std::uint8_t>& mask) {
    set_mask(tensor_index(name), mask);
  }

  /// Writes the optimizer's whole state so that a run resumes exactly: checkpoint format v2
  /// (optimizer/checkpoint.hpp): magic "FLATMIN2", format version, element type, the
  /// composition's identity (policy names and the options that fix state sizes), the parameter
  /// table (names, sizes, flags), the step count, every state entry the base and mask states list
  /// (buffers and scalars: moments, momentum, mask bits and sums, masks' step bookkeeping, Adam's
  /// last β2 and ε), and a CRC-32C of all of it. Must be called between steps (usage_error).
  void save(std::ostream& os) {
    if (phase_ != phase::idle) throw usage_error("flatmin: save() called between ascend() and descend()");
    sync_scaler();
    checkpoint::write<Backend>(os, checkpoint_header(), steps_, [&](auto&& f) { visit_state(f); });
  }

  /// Restores what save() wrote, all or nothing. Throws std::invalid_argument, saying what
  /// differs, for a checkpoint of another format version, element type, composition or parameter
  /// table, an entry of another size, contents this composition cannot have produced (mask bits
  /// past the unit count or beyond the active bound, a step count over 2^53, …), a truncated
  /// stream or a CRC mismatch; the optimizer and the weights are unchanged then. Nothing larger
  /// than the optimizer's own state is allocated, whatever the sizes the stream claims. The
  /// step bookkeeping of a live optimizer (rollback) is replaced with the saved one. Version-1
  /// checkpoints ("FLATMIN1") are refused: they lack state an exact resume needs.
  void load(std::istream& is) {
    if (phase_ != phase::idle) throw usage_error("flatmin: load() called between ascend() and descend()");
    sync_scaler();
    auto st = checkpoint::read<Backend>(is, checkpoint_header(), [&](auto&& f) { visit_state(f); });
    if constexpr (requires { base_state_.check_load(st); }) base_state_.check_load(st);
    if (scaling_) loss_scaler::check_load(st);
    const auto scaler_after = [&]() noexcept {
      if (scaling_) scaler_.after_load();
    };
    if constexpr (requires { descent_state_.check_load(st); }) descent_state_.check_load(st);
    if constexpr (requires { perturb_state_.check_load(st); }) perturb_state_.check_load(st);
    if constexpr (requires { mask_state_.check_load(st); }) {
      auto loaded = mask_state_.check_load(st);
      commit_load(st, loaded.saved_size, [&]() noexcept {
        mask_state_.after_load(loaded);
        scaler_after();
      });
    } else {
      commit_load(st, mask_state_.saved_size(layout_), scaler_after);
    }
  }

 private:
  // unperturbed: the schedule's choice; second: at the second point (two_points)
  enum class phase { idle, ascended, skipped, unperturbed, second };
  using descent_state_type = detail::state_of_t<Descent, T, Backend>;
  using mask_state_type = typename Mask::template state<T, Backend>;
  using mask_view = decltype(std::declval<const mask_state_type&>().get_view());
  using perturb_state_type = detail::state_of_t<Perturb, T, Backend>;
  using term_type =
      typename detail::perturb_term_of<Perturb, T, Backend, typename Base::template state<T, Backend>>::type;

  /// Cancels the step (w restored bit-exactly, idle) when the scope it guards is left by an
  /// exception; a no-op when idle (a path that restored before throwing) or on a normal exit.
  class cancel_on_throw {
   public:
    explicit cancel_on_throw(sharpness_aware& o) : opt_(o), pending_(std::uncaught_exceptions()) {}
    cancel_on_throw(const cancel_on_throw&) = delete;
    cancel_on_throw& operator=(const cancel_on_throw&) = delete;
    ~cancel_on_throw() {
      if (std::uncaught_exceptions() > pending_) opt_.cancel();
    }

   private:
    sharpness_aware& opt_;
    int pending_;
  };

  /// The option rules of every policy, in the precision T the optimizer computes in. Runs from the
  /// first member initializer, so that no state is sized from options that were not checked.
  static bool check_options(const Base& b, const Perturb& p, const Mask& m, const optimizer_options& o,
                            const Descent& d, const Regularizer& r, const Schedule& sc) {
    detail::validate_as<T>(b);
    detail::validate_as<T>(p);
    detail::validate_as<T>(m);
    o.validate();
    detail::validate_as<T>(d);
    detail::validate_as<T>(r);
    detail::validate_as<T>(sc);
    if constexpr (requires { p.check_base(b); }) p.check_base(b);  // a perturbation's demand on the base
    return true;
  }

  const param_set<W, G>& checked(const param_set<W, G>& ps) {
    ps.validate();
    for (const auto& v : ps.tensors()) {
      if (!Backend::accepts(v.space))
        throw usage_error("flatmin: tensor " + detail::quote(v.name) + " is in " +
                          (v.space == memory_space::host ? "host" : "device") + " memory, which backend " +
                          Backend::name + " cannot use");
      if constexpr (requires { Backend::check_view(v); }) Backend::check_view(v);
    }
    if constexpr (!perturbs || !perturbs_layout)  // nothing to scale: a silent no-op would mislead
      for (const auto& v : ps.tensors())
        if (v.options.rho_scale != 1.0)
          throw std::invalid_argument("flatmin: tensor " + detail::quote(v.name) + " has rho_scale " +
                                      detail::format_value(v.options.rho_scale) +
                                      (perturbs ? ", but this composition perturbs no tensor of the layout"
                                                : ", but this composition does not perturb") +
                                      " (leave it at 1)");
    for (const auto& f : ps.frozen())
      if (!Backend::accepts(f.space))
        throw usage_error("flatmin: frozen tensor " + detail::quote(f.name) + " is in " +
                          (f.space == memory_space::host ? "host" : "device") + " memory, which backend " +
                          Backend::name + " cannot use");
    return ps;
  }

  /// The options (mutable between steps) against the rules and against the state built from them.
  void validate() const {
    check_options(base_, perturb_, mask_, options_, descent_, reg_, schedule_);
    static_cast<void>(radius());  // a bad ρ_t throws here, before the ascent changes anything
    if constexpr (requires { base_state_.check(base_); }) base_state_.check(base_);
    if constexpr (requires { mask_state_.check(mask_); }) mask_state_.check(mask_);
    store_.check(options_);
    // A descent rule that writes the weights after the base step (WSAM's decoupled form) would
    // bypass the master copy, which the next step starts from.
    if constexpr (requires(descent_state_type& st) {
                    st.finish(descent_, layout_, descent::step_context{});
                  })
      if (options_.master_weights && descent_writes_weights())
        throw std::invalid_argument(std::string("flatmin: optimizer_options::master_weights with descent "
                                                "rule ") +
                                    Descent::name + " writing the weights after the base step (WSAM: use "
                                    ".decouple = false)");
  }
  bool descent_writes_weights() const {
    if constexpr (requires { descent_.decouple; })
      return descent_.decouple;
    else
      return true;
  }

  /// 1 / the gradients' scale in T (step_args::grad_scale, or the dynamic loss scale, which then
  /// must not be given twice); the scale and its inverse must both be normal numbers of T.
  T inverse_scale(const step_args& a) {
    if (scaling_ && a.grad_scale != 1.0)
      throw usage_error(
          "flatmin: step_args::grad_scale given while the dynamic loss scaler is on "
          "(optimizer_options::loss_scale): the optimizer divides its own scale out; leave grad_scale at 1");
    const double scale = scaling_ ? static_cast<double>(scaler_.scale()) : a.grad_scale;
    detail::check_option<T>("step_args", "grad_scale", scale, detail::domain::positive);
    detail::check_option<T>("step_args", "1 / grad_scale", 1.0 / scale, detail::domain::positive);
    report_.loss_scale = scale;
    return static_cast<T>(1.0 / scale);
  }

  /// The scaler follows `options().loss_scale.enabled` between steps: switched on, it starts at
  /// init_scale; switched off, its state is dropped (and leaves the checkpoint). The master
  /// weights follow `options().master_weights` the same way.
  void sync_scaler() {
    store_.sync(options_, layout_);  // and the master weights likewise (weight_store.hpp)
    if (options_.loss_scale.enabled == scaling_) return;
    scaler_ = options_.loss_scale.enabled ? loss_scaler(options_.loss_scale) : loss_scaler();
    scaling_ = options_.loss_scale.enabled;
  }

  /// The dynamic loss scale follows the step's outcome (nothing when the scaler is off).
  void scale_update(bool overflowed) {
    if (scaling_) scaler_.update(overflowed, options_.loss_scale);
  }

  /// The descent's 1/grad_scale times the clipping factor (optimizer/clip.hpp), in T.
  T clip(T inv, double norm) {
    const double c = detail::clip_coefficient(options_.clip_grad_norm, norm);
    report_.clip_scale = c;
    return c < 1.0 ? static_cast<T>(static_cast<double>(inv) * c) : inv;
  }

  /// The ascent-time hooks (concepts/roles.hpp, `ascent_hook`) of the policies that have one, from
  /// the statistics the ascent computed anyway: nothing is run when no policy has a hook.
  void on_ascent(const kernels::grad_stats& s, double scale, T inv) {
    const ascent_stats a{steps_ + 1, s.g2, s.n2, scale, scale * std::sqrt(s.d2)};
    if constexpr (ascent_hook<Descent, T, Backend>) descent_.on_ascent(layout_, a, inv);
    if constexpr (ascent_hook<descent_state_type, T, Backend>) descent_state_.on_ascent(layout_, a, inv);
    if constexpr (requires { perturb_state_.on_ascent(perturb_, layout_, a, inv); })
      perturb_state_.on_ascent(perturb_, layout_, a, inv);
    if constexpr (ascent_hook<typename Regularizer::template state<T, Backend>, T, Backend>)
      reg_state_.on_ascent(layout_, a, inv);
  }

  /// The descent gradient's adjust: the regularizer's, after a perturbation state's own when it has
  /// one (perturb::sampa's mix of its two gradients).
  template <class Adjust>
  auto perturbation_adjust(const Adjust& reg, bool perturbed) {
    if constexpr (requires { perturb_state_.descent_adjust(perturb_, perturbed); }) {
      auto own = perturb_state_.descent_adjust(perturb_, perturbed);
      return detail::chained_adjust<T, decltype(own), Adjust>{own, reg};
    } else {
      return reg;
    }
  }

  /// This step's ρ: the perturbation's, or the descent rule's ρ_t (`radius`, descent/state.hpp).
  double radius() const {
    if constexpr (perturbation_has_fixed_scale<Perturb>) {
      return perturb_.scale();
    } else if constexpr (requires { descent_.radius(perturb_.rho, base_); }) {
      const double r = descent_.radius(perturb_.rho, base_);
      detail::check_option<T>("descent", "radius(rho, base)", r, detail::domain::non_negative);
      return r;
    } else {
      return perturb_.rho;
    }
  }

  term_type term() const {
    if constexpr (requires { perturb_state_.term(perturb_, base_state_, steps_); })
      return perturb_state_.term(perturb_, base_state_, steps_);  // a perturbation with state
    else
      return perturb_.template term<T>(base_state_, steps_);
  }

  // A mask's step-local state (a refresh, Fisher sums) becomes its state only when a step is applied.
  void mask_commit() {
    if constexpr (requires { mask_state_.commit_step(); }) {
      mask_state_.commit_step();
      // A committed mask may need more saved weights than the last bound (mask::dynamic's
      // refresh after a checkpoint with a smaller bound): grow them before the next ascent.
      grow_saved();
    }
  }
  /// The saved weights hold what the mask may now need (mask_state_.saved_size): after a refresh,
  /// a set mask, a commit or spanning the processes, any of which may raise its bound. Never
  /// shrinks. (Only masks with a compact state change it, and those go with layout perturbations.)
  void grow_saved() {
    if constexpr (perturbs && perturbs_layout) {
      const std::size_t need = mask_state_.saved_size(layout_);
      if (saved_.size() < need) saved_ = Backend::template make_vector<W>(need);
    }
  }
  void mask_abandon() {
    if constexpr (requires { mask_state_.abandon_step(); }) mask_state_.abandon_step();
  }
  bool mask_nonfinite_examples() const {
    if constexpr (requires { mask_state_.nonfinite_examples(); })
      return mask_state_.nonfinite_examples();
    else
      return false;
  }

  void check_tensor(std::size_t t) const {
    if (t >= layout_.tensor_count())
      throw std::invalid_argument("flatmin: tensor index " + std::to_string(t) + " out of range (" +
                                  std::to_string(layout_.tensor_count()) + " tensors)");
  }
  std::size_t tensor_index(std::string_view name) const {
    for (std::size_t t = 0; t < names_.size(); ++t)
      if (names_[t] == name) return t;
    throw std::invalid_argument("flatmin: no tensor named " + detail::quote(std::string(name)));
  }

  /// What the mask-dependent passes run over (mask/detail/pass_target.hpp).
  mask::detail::pass_target<T, Backend, mask_state_type> target() const {
    return {mask_state_, layout_};
  }

  kernels::grad_stats stats(T inv) {
    return stats(inv, [](auto pass) { return pass; });
  }
  /// The statistics by the pass `wrap(stats_pass)`.
  template <class Wrap>
  kernels::grad_stats stats(T inv, const Wrap& wrap) {
    const auto make = [&](auto view, bool norm_over_mask) {
      return wrap(kernels::stats_pass<T, term_type, decltype(view)>{term(), view, inv, norm_over_mask});
    };
    if (reducer_)
      return target().stats(make, [&](const auto& range, const auto& p) { return reduce_over(range, p); });
    return target().stats(make);
  }
  /// The step's first statistics. Where the mask estimates from g this step (mask::fisher's
  /// element scores, `statistics_scores`), the same pass writes the estimate as it reads g: one
  /// read of g instead of two (its units are elements, so its masks are not compact and the
  /// statistics are one pass over the layout).
  kernels::grad_stats stats_and_estimate(T inv) {
    if constexpr (requires { mask_state_.statistics_scores(mask_, steps_ + 1, inv); }) {
      if (const auto scores = mask_state_.statistics_scores(mask_, steps_ + 1, inv))
        return stats(inv, [&](auto pass) {
          return kernels::stats_scores_pass<decltype(pass), T>{pass, *scores};
        });
    }
    return stats(inv);
  }

  /// A reduction over the whole layout (reduce_over).
  template <class Pass>
  kernels::grad_stats reduce_full(const Pass& pass) {
    return reduce_over(layout_.full(), pass);
  }
  /// A reduction over `range`: this process's, or with a reducer the sum over every process of
  /// the per-segment partials (stats_reducer.hpp; a compact range's segments lie inside the layout's,
  /// so the processes' lists concatenate to the one-process list).
  template <class Range, class Pass>
  kernels::grad_stats reduce_over(const Range& range, const Pass& pass) {
    if (!reducer_) return Backend::template reduce<kernels::grad_stats>(range, pass);
    const auto partial = Backend::template reduce_segments<kernels::grad_stats>(range, pass);
    return reducer_->combine(partial.data(), partial.size());
  }

  /// The descent, undoing the ascent first when `restore` (fused where the saved weights are dense).
  template <class Adjust, class Update>
  void descend_pass(const Adjust& adjust, const Update& update, T inv, bool restore) {
    store_.for_descent(options_, steps_ + 1, [&](auto store) {
      target().descend(restore, restore_pass(), [&](auto fused) {
        constexpr int R = decltype(fused)::value;
        const W* saved = Backend::data(saved_);
        using pass = kernels::descend_pass<T, mask_view, Adjust, Update, R, W, decltype(store)>;
        Backend::for_each(layout_.full(),
                          pass{mask_state_.get_view(), adjust, update, inv, saved, R == 1, store});
      });
    });
  }

  void restore() {
    if constexpr (perturbs_layout)
      target().for_each(restore_pass());
    else
      perturb_state_.undo(layout_);
  }
  auto restore_pass() const {
    return [saved = Backend::data(saved_)](auto view) {
      return kernels::restore_pass<W, decltype(view)>{view, saved};
    };
  }

  /// Hands every checkpoint entry of the states to f(name, value).
  template <class F>
  void visit_state(F& f) {
    base_state_.visit(f);
    mask_state_.visit(f);
    if constexpr (requires { reg_state_.visit(f); }) reg_state_.visit(f);
    store_.visit(f);
    if (scaling_) scaler_.visit(f);
    if constexpr (requires { descent_state_.visit(f); }) descent_state_.visit(f);
    if constexpr (requires { perturb_state_.visit(f); }) perturb_state_.visit(f);
  }

  /// What a checkpoint must match: element type, composition identity, parameter table.
  checkpoint::header checkpoint_header() const {
    checkpoint::header h;
    h.element_size = sizeof(T);
    h.weight_size = checkpoint::type_code<W>();
    h.grad_size = checkpoint::type_code<G>();
    h.identity = "sharpness_aware<" + checkpoint::name_of(perturb_, perturb_state_) + ", " +
                 checkpoint::name_of(mask_, mask_state_) + ", " + checkpoint::name_of(base_, base_state_) +
                 ", " + checkpoint::name_of(descent_, descent_state_) + ", " +
                 checkpoint::name_of(reg_, reg_state_) + ">" + (scaling_ ? " with dynamic_loss_scale" : "");
    h.numel = layout_.numel();
    const auto& ts = layout_.host_tensors();
    h.tensors.reserve(ts.size());
    for (std::size_t t = 0; t < ts.size(); ++t)  // the lr / weight-decay slot is not the state's identity
      h.tensors.push_back({names_[t], ts[t].size, ts[t].flags & tensor_flags::option_bits});
    return h;
  }

  /// The end of load(): backend copies and a saved-weights buffer of `need` entries are made
  /// (may throw), then everything is committed with swaps and assignments (cannot throw).
  template <class After>
  void commit_load(checkpoint::staged<Backend>& st, std::size_t need, const After& after) {
    st.build();
    typename Backend::template vector<W> grown;
    if (perturbs && perturbs_layout && need > saved_.size()) grown = Backend::template make_vector<W>(need);
    st.commit();
    after();
    if (grown.size()) saved_.swap(grown);
    steps_ = static_cast<std::size_t>(st.steps());
    report_ = step_report{};
  }

  static std::vector<std::string> names_of(const param_set<W, G>& ps) {
    std::vector<std::string> n;
    for (const auto& v : ps.tensors()) n.push_back(v.name);
    return n;
  }

  Base base_;
  Perturb perturb_;
  Mask mask_;
  Descent descent_;
  Regularizer reg_;
  Schedule schedule_;
  optimizer_options options_;
  bool scaling_;        ///< the dynamic loss scaler is on (follows options_ between steps)
  loss_scaler scaler_;  ///< its scale and growth tracker
  backend::layout<T, Backend> layout_;
  typename Base::template state<T, Backend> base_state_;
  mask_state_type mask_state_;
  typename Regularizer::template state<T, Backend> reg_state_;
  descent_state_type descent_state_;
  perturb_state_type perturb_state_;
  typename Backend::template vector<W> saved_;  ///< a copy of the perturbed weights, in W
  std::vector<std::string> names_;  ///< tensor names: the checkpoint's parameter table, lookups by name
  detail::weight_store<W, T, Backend> store_;  ///< 16-bit weights: master copy, rounding (weight_store.hpp)
  std::size_t perturbable_ = 0;
  stats_reducer* reducer_ = nullptr;  ///< set_stats_reducer(): the statistics of a sharded run
  std::size_t steps_ = 0;
  phase phase_ = phase::idle;
  step_report report_;
};

}  // namespace flatmin
