//! labimg netboot appliance: DHCP, TFTP, HTTP, inventory and boot events.
