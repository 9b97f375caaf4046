#pragma once
/// @file concepts.hpp
/// The concepts of every role and of the objectives, for code that included them from here.
/// They live at the bottom of the layers (flatmin/concepts/), so that policies need not include
/// upward into optimizer/.

#include "../concepts/objective.hpp"
#include "../concepts/roles.hpp"
