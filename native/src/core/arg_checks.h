// The argument checks of the params structs' validate() (core/params.cc, core/edit/edit.cc): InvalidArgument
// "Expected <what> for <name> but received <value>", the message form of every argument error (napi/convert.h).
#pragma once

#include <sstream>
#include <string>

#include "core/errors.h"

namespace blipdiff::arg_checks {

template <typename T>
std::string str(const T& value) {
  std::ostringstream out;
  out << value;
  return out.str();
}

inline void expect(bool ok, const std::string& what, const std::string& name, const std::string& value) {
  if (!ok) throw InvalidArgument("Expected " + what + " for " + name + " but received " + value);
}

}  // namespace blipdiff::arg_checks
